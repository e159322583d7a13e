"""Tenants (admin) and API keys (each tenant manages its own), as the API shows them.

Each call runs its database work in one worker thread (never on the event loop); the access
policy (service/tenancy/access.py) decides what a key may create, rotate or revoke."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from model_store.db import ApiKeyRow, TenantRow
from service.errors import Forbidden
from service.tenancy import access, tenants
from service.tenancy import api_keys as keys
from service.tenancy.access_schemas import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyPublic,
    TenantList,
    TenantPublic,
)
from service.tenancy.api_keys import Principal
from service.tenancy.limits import Limits


def tenant_public(row: TenantRow) -> TenantPublic:
    return TenantPublic(
        id=row.id, name=row.name, created_at=row.created_at, limits=Limits.from_row(row.limits)
    )


def key_public(row: ApiKeyRow) -> KeyPublic:
    return KeyPublic(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=row.scopes.split(","),
        models=row.allowed_models,
        limits=Limits.from_row(row.limits),
        priority_cap=row.priority_cap or 1,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        rotated_from=row.rotated_from,
        active=keys.is_active(row),
    )


def _created(row: ApiKeyRow, secret: str) -> KeyCreated:
    return KeyCreated(**key_public(row).model_dump(), key=secret)


class KeyAdmin:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    # tenants -------------------------------------------------------------------------------------
    async def create_tenant(self, name: str, limits: Limits | None) -> TenantPublic:
        return tenant_public(await run_in_threadpool(tenants.create_tenant, self.sessions, name, limits))

    async def list_tenants(self) -> TenantList:
        rows = await run_in_threadpool(tenants.list_tenants, self.sessions)
        return TenantList(data=[tenant_public(r) for r in rows])

    async def set_tenant_limits(self, name: str, limits: Limits) -> TenantPublic:
        """Takes effect on each gateway within the key cache TTL."""
        return tenant_public(await run_in_threadpool(tenants.set_limits, self.sessions, name, limits))

    # keys ----------------------------------------------------------------------------------------
    async def create_key(self, principal: Principal, body: KeyCreate) -> KeyCreated:
        """A key with at most its creator's power; restrictions not asked for are inherited."""
        return await run_in_threadpool(self._create_key, principal, body)

    def _create_key(self, principal: Principal, body: KeyCreate) -> KeyCreated:
        tenant_id = self._key_tenant(principal, body)
        power = access.minted_power(
            principal, tenant_id, body.scopes, body.models, body.expires_in_s, body.limits, body.priority_cap
        )
        row, secret = keys.create_key(
            self.sessions,
            tenant_id,
            sorted(power.scopes),
            name=body.name,
            expires_at=power.expires_at,
            allowed_models=sorted(power.models) if power.models is not None else None,
            limits=power.limits,
            priority_cap=power.priority_cap,
        )
        return _created(row, secret)

    def _key_tenant(self, principal: Principal, body: KeyCreate) -> int:
        """The tenant the new key belongs to (another tenant: admin keys only)."""
        if body.tenant is None:
            return principal.tenant_id
        if not principal.has("admin"):  # before any lookup: tenant names are not for them to probe
            raise Forbidden("only an admin key may create keys for another tenant")
        return tenants.by_name(self.sessions, body.tenant).id

    async def list_keys(self, tenant_id: int) -> KeyList:
        rows = await run_in_threadpool(keys.list_keys, self.sessions, tenant_id)
        return KeyList(data=[key_public(r) for r in rows])

    async def get_key(self, tenant_id: int, key_id: int) -> KeyPublic:
        return key_public(await run_in_threadpool(keys.get_key, self.sessions, tenant_id, key_id))

    async def revoke_key(self, principal: Principal, key_id: int) -> KeyPublic:
        """Revoked keys stop working on every gateway within the key cache TTL (seconds)."""
        row = await run_in_threadpool(
            keys.revoke, self.sessions, principal.tenant_id, key_id, _guard(principal, "revoke")
        )
        return key_public(row)

    async def rotate_key(self, principal: Principal, key_id: int, overlap_s: float) -> KeyCreated:
        """A successor with the old key's power; the old key works `overlap_s` longer."""
        row, secret = await run_in_threadpool(
            keys.rotate, self.sessions, principal.tenant_id, key_id, overlap_s, _guard(principal, "rotate")
        )
        return _created(row, secret)


def _guard(principal: Principal, action: str) -> Callable[[ApiKeyRow], None]:
    return lambda row: access.check_covers(principal, access.KeyPower.of_row(row), action)
