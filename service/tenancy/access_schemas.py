"""API schemas of tenants, keys, sharing and usage (separate from database rows)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import Timestamp
from service.tenancy.api_keys import Scope
from service.tenancy.limits import Limits

_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"  # no NUL or control characters (PostgreSQL refuses NUL)


class ErrorBody(BaseModel):
    """Every error answer: a message and a stable code; never a trace, path or address."""

    error: str
    code: str


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    limits: Limits | None = None


class TenantPublic(BaseModel):
    id: int
    name: str
    created_at: Timestamp
    limits: Limits | None = None


class TenantList(BaseModel):
    object: str = "list"
    data: list[TenantPublic]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=128, pattern=_PRINTABLE)
    scopes: list[Scope] = Field(min_length=1, max_length=4)
    models: list[Annotated[str, Field(min_length=1, max_length=63, pattern=_PRINTABLE)]] | None = Field(
        default=None, max_length=1000, description="allowlist of model names; null: every model"
    )
    expires_in_s: int | None = Field(
        default=None, ge=1, le=10 * 365 * 86_400, description="default: the creating key's expiry"
    )
    limits: Limits | None = Field(
        default=None, description="fields left out: the creating key's; an explicit 0 asks for none"
    )
    priority_cap: int | None = Field(
        default=None,
        ge=1,
        le=10,
        description="the highest priority level (1 = highest) the key may ask for; "
        "default and best allowed: the creating key's cap",
    )
    tenant: str | None = Field(
        default=None, max_length=63, description="admin only: create the key for this tenant"
    )


class KeyPublic(BaseModel):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    models: list[str] | None = None
    limits: Limits | None = None
    priority_cap: int = 1
    created_at: Timestamp
    expires_at: Timestamp | None = None
    revoked_at: Timestamp | None = None
    rotated_from: int | None = None
    active: bool


class KeyCreated(KeyPublic):
    key: str = Field(description="the secret, shown only in this answer")


class KeyList(BaseModel):
    object: str = "list"
    data: list[KeyPublic]


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_s: int | None = Field(
        default=None, ge=0, le=90 * 86_400, description="how long the old key keeps working"
    )


class SharingSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    visibility: Literal["private", "public"] = "private"
    tenants: list[Annotated[str, Field(max_length=63, pattern=_PRINTABLE)]] = Field(
        default_factory=list, max_length=1000
    )
    allow_finetune: bool = Field(
        default=False,
        description="the tenants it is shared with (every tenant if public) may also fine-tune it; "
        "revoking this (or the share) stops their fine-tuned versions from serving",
    )


class SharingPublic(BaseModel):
    model: str
    visibility: Literal["private", "public"]
    tenants: list[str]
    allow_finetune: bool = False
    shared_name: str = Field(description="how other tenants name this model: owner~model")


class UsageRow(BaseModel):
    model: str | None = None
    key_id: int | None = None
    day: date | None = None
    requests: int
    items: int
    compute_s: float
    prompt_tokens: int = 0  # text generation (workers/contract/usage.py::record_tokens)
    completion_tokens: int = 0


class UsageReport(BaseModel):
    object: str = "usage"
    start: date = Field(alias="from")
    end: date = Field(alias="to")
    group_by: str
    data: list[UsageRow]
    total: UsageRow

    model_config = ConfigDict(populate_by_name=True)
