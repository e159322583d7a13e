"""API schemas, separate from database rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, computed_field

from model_store.signature import Signature, VersionConfig


def _utc(value: datetime) -> datetime:
    """A naive value is UTC (the database stores UTC); an aware one is converted to UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _rfc3339(value: datetime) -> str:
    return _utc(value).isoformat().replace("+00:00", "Z")


# Every timestamp the API returns: RFC 3339 in UTC with its offset, e.g. 2026-11-26T13:14:25.194482Z
Timestamp = Annotated[
    datetime, AfterValidator(_utc), PlainSerializer(_rfc3339, return_type=str, when_used="json")
]


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = Field(default="", max_length=4096)


class ModelPublic(BaseModel):
    """A model; also an OpenAI model object (`id`, `object`, `created`, `owned_by`), so that
    OpenAI's SDKs list and retrieve models from the same route."""

    name: str
    description: str
    created_at: Timestamp
    versions: list[int] = Field(default_factory=list)
    aliases: dict[str, int] = Field(default_factory=dict)
    owned_by: str = "modelkiln"
    object: str = "model"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def id(self) -> str:
        return self.name

    @computed_field  # type: ignore[prop-decorator]
    @property
    def created(self) -> int:
        return int(_utc(self.created_at).timestamp())


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
    created_at: Timestamp


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=10**9)


class AliasPublic(BaseModel):
    model: str
    alias: str
    version: int
