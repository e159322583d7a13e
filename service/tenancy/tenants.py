"""Tenants: created by an admin; every model, version, key and job belongs to one."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from model_store import registry
from model_store.db import TenantRow
from model_store.errors import NotFound
from model_store.names import check_tenant_name, is_tenant_name
from service.tenancy.limits import Limits


def _limits_json(limits: Limits | None) -> dict[str, float] | None:
    return limits.model_dump(exclude_defaults=True) if limits is not None and limits.any else None


def create_tenant(sessions: sessionmaker[Session], name: str, limits: Limits | None = None) -> TenantRow:
    check_tenant_name(name)
    return registry.create_tenant(sessions, name, _limits_json(limits))


def list_tenants(sessions: sessionmaker[Session]) -> list[TenantRow]:
    with sessions() as s:
        return list(s.scalars(select(TenantRow).order_by(TenantRow.id)))


def by_name(sessions: sessionmaker[Session], name: str) -> TenantRow:
    if not is_tenant_name(name):
        raise NotFound("tenant not found")
    with sessions() as s:
        row = s.scalar(select(TenantRow).where(TenantRow.name == name))
    if row is None:
        raise NotFound(f"tenant {name[:64]!r} not found")
    return row


def set_limits(sessions: sessionmaker[Session], name: str, limits: Limits | None) -> TenantRow:
    """Takes effect on each gateway within the key cache TTL."""
    if not is_tenant_name(name):
        raise NotFound("tenant not found")
    with sessions() as s:
        row = s.scalar(select(TenantRow).where(TenantRow.name == name))
        if row is None:
            raise NotFound(f"tenant {name[:64]!r} not found")
        row.limits = _limits_json(limits)
        s.commit()
        return row
