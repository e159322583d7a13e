"""API keys: generated here, stored as sha256 digests, shown in full only once.

Keys are 256-bit random secrets, so a fast digest is the right hash (no password stretching
needed); lookups are by digest, constant-time by construction.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from model_store.db import ApiKeyRow, TenantRow, utcnow
from model_store.errors import NotFound
from service.tenancy.limits import Limits

Scope = Literal["infer", "manage", "finetune", "admin"]  # the one list of scopes
SCOPES: tuple[Scope, ...] = get_args(Scope)
KEY_PREFIX = "kiln"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: int
    tenant_id: int
    scopes: frozenset[str]
    prefix: str
    allowed_models: frozenset[str] | None = None  # None: every model the tenant can see
    key_limits: Limits | None = None
    tenant_limits: Limits | None = None
    priority_cap: int = 1  # the highest priority level this key may ask for (1: any)
    expires_at: datetime | None = None

    def has(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> tuple[str, str]:
    """(full key, display prefix)."""
    prefix = secrets.token_hex(4)
    return f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}", f"{KEY_PREFIX}_{prefix}"


def check_scopes(scopes: list[str] | tuple[str, ...]) -> list[str]:
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {', '.join(SCOPES)}")
    return sorted(set(scopes))


def create_key(
    sessions: sessionmaker[Session],
    tenant_id: int,
    scopes: list[str],
    name: str = "",
    secret: str | None = None,
    expires_at: datetime | None = None,
    allowed_models: list[str] | None = None,
    limits: Limits | None = None,
    rotated_from: int | None = None,
    priority_cap: int = 1,
) -> tuple[ApiKeyRow, str]:
    full, prefix = new_secret()
    if secret is not None:
        full, prefix = secret, secret[:12]
    row = ApiKeyRow(
        tenant_id=tenant_id,
        name=name,
        prefix=prefix,
        key_hash=digest(full),
        scopes=",".join(check_scopes(scopes)),
        expires_at=expires_at,
        allowed_models=sorted(set(allowed_models)) if allowed_models is not None else None,
        limits=limits.model_dump(exclude_defaults=True) if limits is not None and limits.any else None,
        rotated_from=rotated_from,
        priority_cap=priority_cap,
    )
    with sessions() as s:
        s.add(row)
        s.commit()
    return row, full


def count_keys(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(ApiKeyRow)) or 0)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=utcnow().tzinfo)


def is_active(row: ApiKeyRow) -> bool:
    if row.revoked_at is not None:
        return False
    return row.expires_at is None or _aware(row.expires_at) > utcnow()


def lookup(sessions: sessionmaker[Session], secret: str) -> Principal | None:
    with sessions() as s:
        found = s.execute(
            select(ApiKeyRow, TenantRow.limits)
            .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
            .where(ApiKeyRow.key_hash == digest(secret))
        ).first()
    if found is None or not is_active(found[0]):
        return None
    row, tenant_limits = found
    return Principal(
        row.id,
        row.tenant_id,
        frozenset(row.scopes.split(",")),
        row.prefix,
        allowed_models=frozenset(row.allowed_models) if row.allowed_models is not None else None,
        key_limits=Limits.from_row(row.limits),
        tenant_limits=Limits.from_row(tenant_limits),
        priority_cap=row.priority_cap or 1,
        expires_at=row.expires_at,
    )


# management (every query scoped to the caller's tenant) --------------------------------------
def list_keys(sessions: sessionmaker[Session], tenant_id: int) -> list[ApiKeyRow]:
    with sessions() as s:
        return list(
            s.scalars(select(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant_id).order_by(ApiKeyRow.id))
        )


def _owned(s: Session, tenant_id: int, key_id: int) -> ApiKeyRow:
    row = s.get(ApiKeyRow, key_id) if 0 < key_id < 2**31 else None
    if row is None or row.tenant_id != tenant_id:
        raise NotFound("key not found")
    return row


def get_key(sessions: sessionmaker[Session], tenant_id: int, key_id: int) -> ApiKeyRow:
    with sessions() as s:
        return _owned(s, tenant_id, key_id)


def revoke(
    sessions: sessionmaker[Session],
    tenant_id: int,
    key_id: int,
    guard: Callable[[ApiKeyRow], None] = lambda _row: None,
) -> ApiKeyRow:
    with sessions() as s:
        row = _owned(s, tenant_id, key_id)
        guard(row)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            s.commit()
        return row


def rotate(
    sessions: sessionmaker[Session],
    tenant_id: int,
    key_id: int,
    overlap_s: float,
    guard: Callable[[ApiKeyRow], None] = lambda _row: None,
) -> tuple[ApiKeyRow, str]:
    """A successor with exactly the old key's power (scopes, allowlist, limits, priority cap,
    expiry); the old key keeps working for `overlap_s` seconds (or until its own expiry, if
    sooner), then stops. `guard` may refuse (raise) after seeing the old key."""
    with sessions() as s:
        old = _owned(s, tenant_id, key_id)
        if not is_active(old):
            raise NotFound("key not found")
        guard(old)
        own_expiry = old.expires_at
        until = utcnow() + timedelta(seconds=overlap_s)
        if old.expires_at is None or _aware(old.expires_at) > until:
            old.expires_at = until
        s.commit()
    return create_key(
        sessions,
        tenant_id,
        old.scopes.split(","),
        name=old.name,
        expires_at=own_expiry,
        allowed_models=old.allowed_models,
        limits=Limits.from_row(old.limits),
        rotated_from=old.id,
        priority_cap=old.priority_cap or 1,
    )
