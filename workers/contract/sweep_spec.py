"""The declarative sweep spec shared by the gateway (validation) and the trainer (the advancer).

A sweep searches a bounded space of the fine-tune hyperparameters (workers/contract/finetune_spec.py):
only the names below, each with its own kind of range, every bound and value checked against the
same rules a job's hyperparameters obey. Nothing here is evaluated as code; the trainer turns the
spec into an Optuna search (workers/finetune/sweep_search.py).
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from workers.contract.finetune_spec import Hyperparameters, Task

SWEEP_PREFIX = "ftsweep-"  # sweep ids; a dispatch of one on the job stream means "advance it"
MAX_TRIALS = 64
MAX_PARALLEL = 8
MAX_PARAMS = 8
MAX_CHOICES = 32

# the hyperparameters a sweep may search, by kind: "float" takes uniform / log_uniform / choice,
# "int" takes int / choice, "str" takes choice only
SEARCHABLE: dict[str, str] = {
    "learning_rate": "float",
    "weight_decay": "float",
    "l1": "float",
    "dropout": "float",
    "gamma": "float",
    "max_grad_norm": "float",
    "batch_size": "int",
    "epochs": "int",
    "warmup_steps": "int",
    "step_size": "int",
    "optimizer": "str",
    "lr_scheduler": "str",
}
# the metrics a trial reports (workers/finetune/training.py: evaluate), by task
METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "valid_loss"),
    "regression": ("valid_loss", "r2"),
}
Direction = Literal["maximize", "minimize"]
Scalar = bool | int | float | str


class Uniform(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["uniform", "log_uniform"]
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if not self.low < self.high:
            raise ValueError("low must be below high")
        if self.type == "log_uniform" and self.low <= 0:
            raise ValueError("log_uniform needs low > 0")
        return self


class IntRange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["int"]
    low: int = Field(ge=0, le=10_000_000)
    high: int = Field(ge=0, le=10_000_000)
    step: int = Field(default=1, ge=1, le=10_000_000)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if not self.low < self.high:
            raise ValueError("low must be below high")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("a log int range needs low >= 1 and step 1")
        return self


class Choice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["choice"]
    values: list[StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=32)]] = Field(
        min_length=1, max_length=MAX_CHOICES
    )

    @model_validator(mode="after")
    def _distinct(self) -> Choice:
        if len({json_key(v) for v in self.values}) != len(self.values):
            raise ValueError("choice values must be distinct")
        return self


Param = Annotated[Uniform | IntRange | Choice, Field(discriminator="type")]


class Search(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["grid", "random", "bayesian"]
    max_trials: int | None = Field(default=None, ge=1, le=MAX_TRIALS)
    parallel: int = Field(default=1, ge=1, le=MAX_PARALLEL)
    metric: str = Field(default="", max_length=32, description="default: the task's promote metric")
    direction: Direction | None = None


class EarlyTermination(BaseModel):
    """A median pruner: a trial whose metric after an epoch is worse than the median of the
    finished trials at that epoch is stopped (cancelled, recorded as pruned); never after its
    last epoch (it finishes: pruning would save nothing)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["median"] = "median"
    warmup_epochs: int = Field(default=1, ge=0, le=1000, description="epochs before a trial may be pruned")
    min_trials: int = Field(default=2, ge=1, le=MAX_TRIALS, description="finished trials before pruning")


class SweepSpec(BaseModel):
    """What the advancer needs beyond the sweep row's columns (stored as the row's `spec`)."""

    model_config = ConfigDict(extra="forbid")

    task: Task
    hyperparameters: Hyperparameters
    search: Search
    space: dict[str, Param]
    early_termination: EarlyTermination | None = None
    validation_split: float | None = None
    promote: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    publish_existing: bool = True

    @property
    def metric(self) -> str:
        return self.search.metric

    @property
    def maximize(self) -> bool:
        return self.search.direction == "maximize"

    @property
    def max_trials(self) -> int:
        assert self.search.max_trials is not None  # normalised by check_space
        return self.search.max_trials


def json_key(value: Scalar) -> str:
    return f"{type(value).__name__}:{value!r}"


def grid_points(space: dict[str, Param]) -> list[dict[str, Scalar]]:
    """Every combination of the choice values, names in sorted order (deterministic)."""
    names = sorted(space)
    values = []
    for name in names:
        p = space[name]
        if not isinstance(p, Choice):
            raise ValueError(f"grid search needs choice parameters; {name!r} is {p.type}")
        values.append(p.values)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def _grid_size(space: dict[str, Param]) -> int:
    sizes = [len(p.values) if isinstance(p, Choice) else 0 for p in space.values()]
    return math.prod(sizes)


def _check_param(name: str, p: Param, base: dict[str, Any]) -> None:
    kind = SEARCHABLE.get(name)
    if kind is None:
        shown = name[:40] + ("..." if len(name) > 40 else "")
        raise ValueError(f"space: {shown!r} cannot be searched; searchable: {', '.join(SEARCHABLE)}")
    if isinstance(p, Uniform) and kind != "float":
        raise ValueError(f"space: {name!r} takes {'int or choice' if kind == 'int' else 'choice'}")
    if isinstance(p, IntRange) and kind != "int":
        raise ValueError(
            f"space: {name!r} takes {'uniform, log_uniform or choice' if kind == 'float' else 'choice'}"
        )
    probes: list[Any] = p.values if isinstance(p, Choice) else [p.low, p.high]
    for value in probes:
        if isinstance(value, bool) or (kind == "str") != isinstance(value, str):
            raise ValueError(f"space: {name!r}: {value!r} is not a valid {kind}")
        if kind == "int" and not isinstance(value, int):
            raise ValueError(f"space: {name!r}: {value!r} is not an integer")
        try:
            Hyperparameters.model_validate({**base, name: value})
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise ValueError(f"space: {name!r}: {value!r}: {msg}") from None


def check_space(spec: SweepSpec) -> SweepSpec:
    """Every rule the spec must obey beyond its fields' own; ValueError with a readable message.
    Returns the spec with max_trials, metric and direction filled in."""
    if not spec.space:
        raise ValueError("space: give at least one hyperparameter to search")
    if len(spec.space) > MAX_PARAMS:
        raise ValueError(f"space: at most {MAX_PARAMS} hyperparameters")
    base = spec.hyperparameters.model_dump(mode="json")
    for name, p in spec.space.items():
        _check_param(name, p, base)
    search = spec.search
    metric = search.metric or ("accuracy" if spec.task == "classification" else "valid_loss")
    if metric not in METRICS[spec.task]:
        raise ValueError(f"search.metric: {spec.task} reports {', '.join(METRICS[spec.task])}")
    direction = search.direction or ("minimize" if metric == "valid_loss" else "maximize")
    max_trials = search.max_trials
    if search.method == "grid":
        if any(not isinstance(p, Choice) for p in spec.space.values()):
            raise ValueError("grid search needs choice parameters (a list of values for each)")
        size = _grid_size(spec.space)
        if size > MAX_TRIALS:
            raise ValueError(f"the grid has {size} points; at most {MAX_TRIALS}")
        if max_trials is not None and max_trials > size:
            raise ValueError(f"search.max_trials {max_trials} exceeds the grid's {size} points")
        max_trials = max_trials or size
    elif max_trials is None:
        raise ValueError(f"search.max_trials is required for {search.method} search")
    new = search.model_copy(update={"metric": metric, "direction": direction, "max_trials": max_trials})
    return spec.model_copy(update={"search": new})
