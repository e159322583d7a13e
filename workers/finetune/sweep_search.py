"""The search behind a sweep: Optuna, rebuilt from the sweep's trials every time it is asked.

Nothing of Optuna's is stored. Each time the sweep advances, an in-memory study is fed the trials
the database holds (finished ones with their metric, running ones as running, pruned ones with
their per-epoch values) and asked for the next point. The sampler of trial n is seeded from the
sweep's seed and n, so a trainer that dies between two trials changes nothing: the next advancer
rebuilds the same study and asks the same question. Grid search needs no study: trial n is the
n-th point of the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workers.contract.sweep_spec import Choice, IntRange, Param, SweepSpec, grid_points

if TYPE_CHECKING:  # optuna is imported where a search runs: a trainer that runs no sweep needs none
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.trial import FrozenTrial

_STATES = {"succeeded": "COMPLETE", "failed": "FAIL", "cancelled": "FAIL", "pruned": "PRUNED"}


@dataclass(frozen=True, slots=True)
class TrialView:
    """One trial as the search sees it: its point, its state, its metric by epoch and at the end,
    and the epoch its training ends at (its budget, or where early stopping stopped it)."""

    number: int
    params: dict[str, Any]
    state: str  # queued/running/... as the job's status, or "pruned"
    value: float | None = None
    by_epoch: dict[int, float] = field(default_factory=dict)
    last_epoch: int | None = None

    @property
    def trained_out(self) -> bool:
        """Its last epoch is recorded: its version is on the way, pruning would save nothing."""
        return bool(self.by_epoch) and self.last_epoch is not None and max(self.by_epoch) >= self.last_epoch


def _distribution(p: Param) -> BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(p, Choice):
        return CategoricalDistribution(p.values)
    if isinstance(p, IntRange):
        return IntDistribution(p.low, p.high, step=p.step, log=p.log)
    return FloatDistribution(p.low, p.high, log=p.type == "log_uniform")


def distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    return {name: _distribution(p) for name, p in sorted(spec.space.items())}


def trial_seed(seed: int, number: int) -> int:
    return (seed * 1_000_003 + number) % (2**31)


def _frozen(view: TrialView, dists: dict[str, BaseDistribution]) -> FrozenTrial:
    from optuna.trial import TrialState, create_trial

    state = getattr(TrialState, _STATES.get(view.state, "RUNNING"))
    value = view.value if state == TrialState.COMPLETE else None
    if state == TrialState.COMPLETE and (value is None or not math.isfinite(value)):
        state, value = TrialState.FAIL, None  # finished without a usable metric
    params = {k: v for k, v in view.params.items() if k in dists}
    return create_trial(
        params=params,
        distributions={k: dists[k] for k in params},
        value=value,
        state=state,
        intermediate_values=dict(view.by_epoch),
    )


def study(
    spec: SweepSpec, views: list[TrialView], sampler: optuna.samplers.BaseSampler | None = None
) -> optuna.Study:
    import optuna
    from optuna.study import StudyDirection

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = StudyDirection.MAXIMIZE if spec.maximize else StudyDirection.MINIMIZE
    out = optuna.create_study(direction=direction, sampler=sampler)
    dists = distributions(spec)
    for view in views:
        out.add_trial(_frozen(view, dists))
    return out


def _sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if spec.search.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # a few random points first, then TPE: a third of the budget, at least 2, at most 10
    startup = max(2, min(10, spec.max_trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def suggest(spec: SweepSpec, sweep_seed: int, number: int, views: list[TrialView]) -> dict[str, Any]:
    """The point trial `number` trains at, given the trials before it."""
    if spec.search.method == "grid":
        return dict(grid_points(spec.space)[number])
    s = study(spec, views, _sampler(spec, trial_seed(sweep_seed, number)))
    return dict(s.ask(distributions(spec)).params)


def should_prune(spec: SweepSpec, views: list[TrialView], running: TrialView) -> bool:
    """The median rule: `running`'s metric at its last epoch is worse than the median of the
    finished trials at that epoch (after the warm-up, once enough trials finished). Never once
    it has trained its last epoch: that trial is finishing, and its result stands."""
    et = spec.early_termination
    if et is None or not running.by_epoch or running.trained_out:
        return False
    import optuna

    pruner = optuna.pruners.MedianPruner(n_startup_trials=et.min_trials, n_warmup_steps=et.warmup_epochs)
    others = [v for v in views if v.number != running.number]
    s = study(spec, others)
    frozen = _frozen(
        TrialView(running.number, running.params, "running", None, running.by_epoch), distributions(spec)
    )
    return bool(pruner.prune(s, frozen))


def best(spec: SweepSpec, views: list[TrialView]) -> TrialView | None:
    """The succeeded trial with the best metric (the lowest number among equals)."""
    done = [v for v in views if v.state == "succeeded" and v.value is not None and math.isfinite(v.value)]
    if not done:
        return None
    sign = -1.0 if spec.maximize else 1.0
    return min(done, key=lambda v: (sign * float(v.value or 0.0), v.number))
