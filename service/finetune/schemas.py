"""API schemas for files and fine-tuning jobs (OpenAI's shapes), separate from database rows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.finetune.openai_compat import normalize
from workers.contract.finetune_spec import Hyperparameters, Resources, Task, check_metric

_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128, description="name, name:version or name:alias")
    training_file: str = Field(min_length=1, max_length=40)
    validation_file: str | None = Field(default=None, max_length=40)
    validation_split: float | None = Field(default=None, gt=0, lt=1)
    task: Task | None = Field(
        default=None, description="None: causal-lm for an hf-causal-lm base, else classification"
    )
    suffix: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,30}$")
    target_model: str | None = Field(default=None, pattern=_NAME)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=16)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    promote: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    resources: Resources = Field(default_factory=Resources)
    promote_metric: str | None = Field(
        default=None, max_length=32, description="what promotion and early stopping compare"
    )
    keep_checkpoints: int = Field(
        default=1, ge=0, le=100, description="when the job ends, keep the best and this many last"
    )

    @model_validator(mode="before")
    @classmethod
    def _openai_shapes(cls, data: Any) -> Any:
        """OpenAI's names, "auto" and `method` (service/finetune/openai_compat.py)."""
        return normalize(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _one_validation_source(self) -> JobCreate:
        if self.task is not None:
            check_metric(self.task, self.promote_metric)
        if self.validation_file and self.validation_split:
            raise ValueError("give validation_file or validation_split, not both")
        if self.suffix and self.target_model:
            raise ValueError("give suffix or target_model, not both")
        return self


def task_for(body: JobCreate, base_format: str) -> Task:
    """The job's task: a causal LM learns causal-lm (with LoRA), other bases what was asked
    (classification by default). ValueError with a client-fit message when they disagree."""
    causal = base_format == "hf-causal-lm"
    if causal and body.task not in (None, "causal-lm"):
        raise ValueError(f"an hf-causal-lm model is fine-tuned as causal-lm, not {body.task}")
    if not causal and body.task == "causal-lm":
        raise ValueError(f"task causal-lm needs a model of format hf-causal-lm, not {base_format}")
    if not causal and body.hyperparameters.lora is not None and base_format != "hf-encoder":
        raise ValueError(f"lora needs an hf-causal-lm or hf-encoder model, not {base_format}")
    task: Task = "causal-lm" if causal else body.task or "classification"
    check_metric(task, body.promote_metric)
    return task


class FilePublic(BaseModel):
    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    format: str
    sha256: str
    stats: dict[str, Any]
    status: str = "processed"  # OpenAI's: validated at upload, so always processed


class FileList(BaseModel):
    object: str = "list"
    data: list[FilePublic]
    has_more: bool = False


class JobPublic(BaseModel):
    id: str
    object: str = "fine_tuning.job"
    created_at: int
    started_at: int | None
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    status: str
    error: dict[str, Any] | None
    task: str
    hyperparameters: dict[str, Any]
    training_file: str
    validation_file: str | None
    validation_split: float | None
    result_files: list[str] = Field(default_factory=list)
    seed: int
    metadata: dict[str, str]
    promote: str | None
    resources: dict[str, Any] = Field(default_factory=dict)
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    sweep_id: str | None = None  # a trial of this sweep (issue 14)
    sweep_trial: int | None = None
    promote_metric: str | None = None
    method: dict[str, Any] | None = None
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    organization_id: str | None = None


class JobList(BaseModel):
    object: str = "list"
    data: list[JobPublic]
    has_more: bool


class EventPublic(BaseModel):
    id: str
    object: str = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None


class EventList(BaseModel):
    object: str = "list"
    data: list[EventPublic]
    has_more: bool


class CheckpointPublic(BaseModel):
    id: str
    object: str = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuning_job_id: str
    epoch: int
    step_number: int
    sha256: str
    metrics: dict[str, Any]


class CheckpointList(BaseModel):
    object: str = "list"
    data: list[CheckpointPublic]
    has_more: bool = False


class MetricsPublic(BaseModel):
    object: str = "fine_tuning.job.metrics"
    train: list[dict[str, Any]]
    valid: list[dict[str, Any]]


class DryRunPublic(BaseModel):
    object: str = "fine_tuning.job.dry_run"
    valid: bool = True
    model: str
    base_version: int
    target_model: str
    training: dict[str, Any]
    validation: dict[str, Any]
    estimate: dict[str, Any]
