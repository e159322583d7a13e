"""API schemas for compression jobs (OpenAI-like object shapes), separate from database rows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workers.contract.compress_spec import DistillParams, Method, PruneParams, parse_params

_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class CompressionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128, description="name, name:version or name:alias")
    method: Method
    parameters: dict[str, Any] = Field(default_factory=dict, max_length=16)
    training_file: str | None = Field(default=None, min_length=1, max_length=40)
    validation_file: str | None = Field(default=None, min_length=1, max_length=40)
    suffix: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,30}$")
    target_model: str | None = Field(default=None, pattern=_NAME)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=16)
    promote: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_-]{0,31}$")

    @model_validator(mode="after")
    def _consistent(self) -> CompressionCreate:
        if self.suffix and self.target_model:
            raise ValueError("give suffix or target_model, not both")
        if self.promote and not self.validation_file:
            raise ValueError("promote compares accuracy on a validation_file: give one")
        try:
            params = parse_params(self.method, self.parameters)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"parameters for {self.method}: {where}: {first['msg']}") from None
        self.parameters = params.model_dump(mode="json", exclude_none=True)
        if isinstance(params, PruneParams) and params.fine_tune is not None and not self.training_file:
            raise ValueError("pruning with fine_tune needs a training_file")
        if isinstance(params, DistillParams):
            if not self.training_file:
                raise ValueError("distill needs a training_file (classification rows)")
            if (params.student is None) == (params.student_layers is None):
                raise ValueError(
                    "distill needs exactly one of parameters.student and parameters.student_layers"
                )
        return self


class CompressionJobPublic(BaseModel):
    id: str
    object: str = "compression.job"
    created_at: int
    started_at: int | None
    finished_at: int | None
    model: str
    method: str
    parameters: dict[str, Any]
    status: str
    error: dict[str, Any] | None
    training_file: str | None
    validation_file: str | None
    result_model: str | None
    comparison: dict[str, Any] | None
    result_files: list[str] = Field(default_factory=list)
    seed: int
    metadata: dict[str, str]
    promote: str | None
    progress: dict[str, Any] | None
    result: dict[str, Any] | None


class CompressionJobList(BaseModel):
    object: str = "list"
    data: list[CompressionJobPublic]
    has_more: bool
