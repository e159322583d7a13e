"""The declarative fine-tune spec shared by the gateway (validation) and the trainer (execution).

Only declarative hyperparameters: unknown keys are refused (422 at the gateway), nothing here is
ever evaluated as code.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

Optimizer = Literal["sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"]
Scheduler = Literal["constant", "linear", "cosine", "step"]
Task = Literal["classification", "regression", "causal-lm"]


class EarlyStopping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patience: int = Field(default=3, ge=1, le=1000)
    min_delta: float = Field(default=0.0, ge=0, le=1e6)


ModuleName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


class LoraSpec(BaseModel):
    """Train a LoRA adapter (peft) instead of the whole model: the result is a small
    `lora-adapter` version served on its base. `{}` takes the defaults; target_modules None: the
    attention projections of the base's architecture (workers/finetune/lora_build.py)."""

    model_config = ConfigDict(extra="forbid")

    rank: Annotated[int, Strict()] = Field(default=8, ge=1, le=256)
    alpha: float = Field(default=16.0, gt=0, le=10_000)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[ModuleName] | None = Field(default=None, min_length=1, max_length=32)


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=3, ge=1, le=1000)
    batch_size: int = Field(default=32, ge=1, le=65536)
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    optimizer: Optimizer = "adam"
    weight_decay: float = Field(default=0.0, ge=0, le=10)
    l1: float = Field(default=0.0, ge=0, le=10)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    freeze: list[str] = Field(default_factory=list, max_length=64)
    lr_scheduler: Scheduler = "constant"
    warmup_steps: int = Field(default=0, ge=0, le=10_000_000)
    step_size: int = Field(default=1, ge=1, le=1000, description="epochs between decays (step)")
    gamma: float = Field(default=0.1, gt=0, le=1, description="decay factor (step)")
    early_stopping: EarlyStopping | None = None
    max_grad_norm: float | None = Field(default=None, gt=0, le=1e6)
    num_classes: int | None = Field(
        default=None, ge=2, le=100_000, description="classification: widen the head to this many classes"
    )
    lora: LoraSpec | None = Field(
        default=None, description="train a LoRA adapter (hf-causal-lm: always; hf-encoder: when given)"
    )


MAX_PROCESSES = 8  # ranks of one distributed job; on a GPU trainer also at most its visible GPUs


class Resources(BaseModel):
    """What a job runs on: `processes` > 1 trains with DDP, one fenced process per rank (gloo on
    CPU, NCCL with one GPU per rank), started and supervised by the trainer."""

    model_config = ConfigDict(extra="forbid")

    processes: Annotated[int, Strict()] = Field(default=1, ge=1, le=MAX_PROCESSES)


# the metrics each task reports (workers/finetune/scores.py), the one `promote_metric` defaults to,
# and which way each points; promotion and early stopping compare the chosen one
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "valid_loss"),
    "regression": ("r2", "mae", "rmse", "valid_loss"),
    "causal-lm": ("valid_loss", "perplexity"),
}
DEFAULT_METRIC = {"classification": "accuracy", "regression": "r2", "causal-lm": "valid_loss"}
HIGHER_IS_BETTER = frozenset({"accuracy", "precision", "recall", "f1", "roc_auc", "r2"})


def check_metric(task: str, metric: str | None) -> None:
    """ValueError unless `metric` is one the task reports (None: the task's default)."""
    if metric is not None and metric not in TASK_METRICS.get(task, ()):
        known = ", ".join(TASK_METRICS.get(task, ()))
        raise ValueError(f"promote_metric {metric!r} is not a {task} metric; use one of: {known}")


def chosen_metric(task: str, promote_metric: str | None) -> str:
    return promote_metric or DEFAULT_METRIC[task]


DEFAULT_VALIDATION_SPLIT = 0.2  # the share of training rows held out when no validation file is given


class JobSpec(BaseModel):
    """What the trainer needs beyond the job row's columns (stored as the row's `spec`)."""

    model_config = ConfigDict(extra="forbid")

    task: Task
    hyperparameters: Hyperparameters
    validation_split: float | None = None
    promote: str | None = None
    promote_metric: str | None = None  # None: DEFAULT_METRIC[task]
    keep_checkpoints: int = 1  # when the job ends, keep the best and this many last checkpoints
    metadata: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    # False for a job made by a key without `manage`: it may only create its target model
    publish_existing: bool = True

    @model_validator(mode="after")
    def _known_metric(self) -> JobSpec:
        check_metric(self.task, self.promote_metric)
        return self
