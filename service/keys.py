"""API keys: generated here, stored as sha256 digests, shown in full only once.

Keys are 256-bit random secrets, so a fast digest is the right hash (no password stretching
needed); lookups are by digest, constant-time by construction.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from model_store.db import ApiKeyRow, utcnow

SCOPES = ("infer", "manage", "finetune", "admin")
KEY_PREFIX = "kiln"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: int
    tenant_id: int
    scopes: frozenset[str]
    prefix: str
    priority_cap: int = 1  # the highest priority level this key may ask for (1: any)

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
    )
    with sessions() as s:
        s.add(row)
        s.commit()
    return row, full


def count_keys(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(ApiKeyRow)) or 0)


def lookup(sessions: sessionmaker[Session], secret: str) -> Principal | None:
    with sessions() as s:
        row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest(secret)))
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None:
        exp = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=utcnow().tzinfo)
        if exp <= utcnow():
            return None
    return Principal(row.id, row.tenant_id, frozenset(row.scopes.split(",")), row.prefix)
