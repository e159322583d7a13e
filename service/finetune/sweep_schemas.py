"""API schemas for hyperparameter sweeps (`fine_tuning.sweep`), separate from database rows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.contract.finetune_spec import Hyperparameters, Task
from workers.contract.sweep_spec import EarlyTermination, Param, Search

_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_ALIAS = r"^[a-z][a-z0-9_-]{0,31}$"


class SweepCreate(BaseModel):
    """A job's fields (one base model, one dataset, base hyperparameters) plus what to search."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128, description="name, name:version or name:alias")
    training_file: str = Field(min_length=1, max_length=40)
    validation_file: str | None = Field(default=None, max_length=40)
    validation_split: float | None = Field(default=None, gt=0, lt=1)
    task: Task = "classification"
    suffix: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,30}$")
    target_model: str | None = Field(default=None, pattern=_NAME)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=16)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    search: Search
    space: dict[str, Param] = Field(max_length=8)
    early_termination: EarlyTermination | None = None
    promote: str | None = Field(default=None, pattern=_ALIAS)

    @model_validator(mode="after")
    def _one_of_each(self) -> SweepCreate:
        if self.validation_file and self.validation_split:
            raise ValueError("give validation_file or validation_split, not both")
        if self.suffix and self.target_model:
            raise ValueError("give suffix or target_model, not both")
        return self


class SweepPromote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = Field(pattern=_ALIAS)


class TrialPublic(BaseModel):
    number: int
    job_id: str
    status: str
    hyperparameters: dict[str, Any]
    value: float | None
    fine_tuned_model: str | None


class SweepPublic(BaseModel):
    id: str
    object: str = "fine_tuning.sweep"
    created_at: int
    finished_at: int | None
    status: str
    model: str
    target_model: str
    task: str
    training_file: str
    validation_file: str | None
    validation_split: float | None
    seed: int
    hyperparameters: dict[str, Any]
    search: dict[str, Any]
    space: dict[str, Any]
    early_termination: dict[str, Any] | None
    promote: str | None
    metadata: dict[str, str]
    trials: list[TrialPublic]
    best_trial: dict[str, Any] | None
    fine_tuned_model: str | None
    promotion: dict[str, Any] | None
    error: dict[str, Any] | None


class SweepList(BaseModel):
    object: str = "list"
    data: list[SweepPublic]
    has_more: bool
