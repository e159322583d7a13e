"""Tensor signatures (Open Inference Protocol names, datatypes and shapes) and version config."""

from __future__ import annotations

import math
from functools import cached_property
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]

NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

TENSOR_NAME = r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$"
Dim = Annotated[int, Field(ge=-1, le=2**31)]


class TensorSpec(BaseModel):
    """One input or output: name, OIP datatype, shape with -1 for a dynamic dimension."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=TENSOR_NAME)
    datatype: Datatype
    shape: tuple[Dim, ...] = Field(max_length=16)

    def matches_shape(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(want in (-1, got) for want, got in zip(self.shape, shape, strict=True))


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: tuple[TensorSpec, ...] = Field(min_length=1, max_length=64)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _unique_names(self) -> Signature:
        for group in (self.inputs, self.outputs):
            names = [t.name for t in group]
            if len(names) != len(set(names)):
                raise ValueError("tensor names must be unique within inputs and within outputs")
        return self

    @cached_property
    def input_map(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.inputs}

    @cached_property
    def output_map(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.outputs}

    def input(self, name: str) -> TensorSpec | None:
        return self.input_map.get(name)

    def output(self, name: str) -> TensorSpec | None:
        return self.output_map.get(name)

    def batched(self) -> bool:
        """True when every input and output has a dynamic first (batch) dimension."""
        return all(t.shape and t.shape[0] == -1 for t in (*self.inputs, *self.outputs))


class VersionConfig(BaseModel):
    """Per-version serving policy, given at upload."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=8, ge=0, le=4096)
    max_queue_delay_ms: float = Field(default=2.0, ge=0, le=10_000)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # batching policy (all optional; the defaults keep the behaviour of a bare config)
    preferred_batch_sizes: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(default=(), max_length=16)
    priority_levels: int = Field(default=1, ge=1, le=10)  # 1 is the highest level
    default_priority_level: int = Field(default=0, ge=0, le=10)  # 0: the lowest level
    max_queue_size: int = Field(default=0, ge=0, le=10_000_000)  # 0: unbounded
    default_timeout_ms: int = Field(default=0, ge=0, le=3_600_000)  # 0: the server's default
    instances: int = Field(default=1, ge=1, le=16)  # model instances per worker, run concurrently

    @field_validator("max_queue_delay_ms")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> VersionConfig:
        if any(p > max(self.max_batch_size, 1) for p in self.preferred_batch_sizes):
            raise ValueError("preferred_batch_sizes must not exceed max_batch_size")
        if self.default_priority_level > self.priority_levels:
            raise ValueError("default_priority_level must be within priority_levels")
        return self

    def priority_level(self, requested: int, cap: int = 1) -> int:
        """The level a request runs at: its own (0: the default), never above the caller's cap
        (levels count down: 1 is the highest, so a cap of 2 turns a 1 into a 2)."""
        level = requested or self.default_priority_level or self.priority_levels
        if level > self.priority_levels:
            raise ValueError(f"priority must be between 1 and {self.priority_levels}")
        return max(level, min(cap, self.priority_levels))
