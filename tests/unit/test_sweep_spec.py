"""The sweep spec's rules and the search rebuilt from trials (no database, no training)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from model_store.sweeps import last_epoch
from workers.contract.finetune_spec import Hyperparameters
from workers.contract.sweep_spec import (
    Choice,
    EarlyTermination,
    Search,
    SweepSpec,
    Uniform,
    check_space,
    grid_points,
)
from workers.finetune.sweep_search import TrialView, best, should_prune, suggest


def _spec(method: str = "grid", **search: object) -> SweepSpec:
    space = {
        "learning_rate": Choice(type="choice", values=[0.01, 0.1]),
        "batch_size": Choice(type="choice", values=[16, 64]),
    }
    if method != "grid":
        space["learning_rate"] = Uniform(type="log_uniform", low=1e-3, high=1e-1)  # type: ignore[assignment]
    return check_space(
        SweepSpec(
            task="classification",
            hyperparameters=Hyperparameters(),
            search=Search(method=method, **search),  # type: ignore[arg-type]
            space=space,  # type: ignore[arg-type]
        )
    )


def test_grid_defaults_to_every_point_in_a_fixed_order() -> None:
    spec = _spec()
    assert spec.max_trials == 4 and spec.metric == "accuracy" and spec.maximize
    assert grid_points(spec.space) == [
        {"batch_size": 16, "learning_rate": 0.01},
        {"batch_size": 16, "learning_rate": 0.1},
        {"batch_size": 64, "learning_rate": 0.01},
        {"batch_size": 64, "learning_rate": 0.1},
    ]
    assert [suggest(spec, 1, n, []) for n in range(4)] == grid_points(spec.space)
    assert not _spec(metric="valid_loss").maximize


def test_choice_values_keep_their_types() -> None:
    with pytest.raises(ValidationError):
        Choice(type="choice", values=[1, 1])
    with pytest.raises(ValidationError):
        Choice(type="choice", values=[[1, 2]])  # type: ignore[list-item]
    assert Choice(type="choice", values=[True, 1, 1.0, "1"]).values == [True, 1, 1.0, "1"]


def test_the_seeded_search_is_rebuilt_the_same_from_the_same_trials() -> None:
    spec = _spec("bayesian", max_trials=6)
    views = [
        TrialView(0, {"learning_rate": 0.002, "batch_size": 16}, "succeeded", 0.6),
        TrialView(1, {"learning_rate": 0.05, "batch_size": 64}, "succeeded", 0.9),
        TrialView(2, {"learning_rate": 0.01, "batch_size": 16}, "running"),
        TrialView(3, {"learning_rate": 0.02, "batch_size": 64}, "failed"),
    ]
    first = suggest(spec, 42, 4, views)
    assert first == suggest(spec, 42, 4, views)  # another trainer asks the same question
    assert first != suggest(spec, 42, 5, views)  # each trial number its own draw
    assert 1e-3 <= first["learning_rate"] <= 1e-1 and first["batch_size"] in (16, 64)
    random = _spec("random", max_trials=3)
    assert suggest(random, 1, 0, []) == suggest(random, 1, 0, []) != suggest(random, 2, 0, [])


def test_best_and_pruning() -> None:
    spec = _spec("random", max_trials=4)
    spec = spec.model_copy(update={"early_termination": EarlyTermination(warmup_epochs=1, min_trials=2)})
    done = [
        TrialView(0, {"learning_rate": 0.01, "batch_size": 16}, "succeeded", 0.9, {1: 0.8, 2: 0.9}),
        TrialView(1, {"learning_rate": 0.02, "batch_size": 16}, "succeeded", 0.9, {1: 0.7, 2: 0.9}),
        TrialView(2, {"learning_rate": 0.03, "batch_size": 16}, "failed"),
    ]
    top = best(spec, done)
    assert top is not None and top.number == 0  # the lower number among equals
    hopeless = TrialView(3, {"learning_rate": 0.001, "batch_size": 64}, "running", None, {1: 0.2, 2: 0.3})
    promising = TrialView(3, {"learning_rate": 0.001, "batch_size": 64}, "running", None, {1: 0.8, 2: 0.95})
    assert should_prune(spec, done, hopeless) and not should_prune(spec, done, promising)
    assert best(spec, [TrialView(0, {}, "failed")]) is None


def test_a_trial_is_never_pruned_after_its_last_epoch() -> None:
    """Pruned after epoch 5 of 5, a trial has saved nothing and its trainer is registering its
    version: the median rule leaves a trial alone once its last epoch (its budget, or the one early
    stopping ended it at) is recorded, however bad it is."""
    spec = _spec("random", max_trials=4)
    spec = spec.model_copy(update={"early_termination": EarlyTermination(warmup_epochs=0, min_trials=1)})
    done = [
        TrialView(0, {"learning_rate": 0.01, "batch_size": 16}, "succeeded", 0.9, {1: 0.8, 2: 0.9, 3: 0.9})
    ]
    point = {"learning_rate": 0.001, "batch_size": 64}
    midway = TrialView(1, point, "running", None, {1: 0.2, 2: 0.3}, last_epoch=3)
    finished = TrialView(1, point, "running", None, {1: 0.2, 2: 0.3, 3: 0.3}, last_epoch=3)
    stopped_early = TrialView(1, point, "running", None, {1: 0.2, 2: 0.3}, last_epoch=2)
    budget_unknown = TrialView(1, point, "running", None, {1: 0.2, 2: 0.3})
    assert should_prune(spec, done, midway) and should_prune(spec, done, budget_unknown)
    assert not should_prune(spec, done, finished) and not should_prune(spec, done, stopped_early)
    assert finished.trained_out and stopped_early.trained_out and not midway.trained_out


def test_the_epoch_a_trial_ends_at() -> None:
    hp = {"hyperparameters": {"epochs": 5}}
    assert last_epoch(hp, []) == 5 and last_epoch(hp, [(1, {"accuracy": 0.5}), (2, {})]) == 5
    assert last_epoch(hp, [(1, {}), (2, {"stopped_early": False}), (3, {"stopped_early": True})]) == 3
    assert last_epoch({}, [(1, {})]) is None and last_epoch({"hyperparameters": {"epochs": "5"}}, []) is None
