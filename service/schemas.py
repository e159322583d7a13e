"""API schemas, separate from database rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from model_store.signature import Signature, VersionConfig


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = Field(default="", max_length=4096)


class ModelPublic(BaseModel):
    name: str
    description: str
    created_at: datetime
    versions: list[int] = Field(default_factory=list)
    aliases: dict[str, int] = Field(default_factory=dict)


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelPublic]


class VersionPublic(BaseModel):
    model: str
    version: int
    format: str
    sha256: str
    size_bytes: int
    signature: Signature
    config: VersionConfig
    lineage: dict[str, Any] | None = None
    created_at: datetime


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=10**9)


class AliasPublic(BaseModel):
    model: str
    alias: str
    version: int
