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
        return self._tenant(principal, body.tenant, "create keys for")

    def _tenant(self, principal: Principal, tenant: str | None, action: str) -> int:
        """The caller's own tenant, or the one named (admin keys only: any other key is 403
        before any lookup, so tenant names are not for it to probe)."""
        if tenant is None:
            return principal.tenant_id
        if not principal.has("admin"):
            raise Forbidden(f"only an admin key may {action} another tenant")
        return tenants.by_name(self.sessions, tenant).id

    async def list_keys(self, principal: Principal, tenant: str | None = None) -> KeyList:
        def run() -> list[ApiKeyRow]:
            return keys.list_keys(self.sessions, self._tenant(principal, tenant, "list the keys of"))

        return KeyList(data=[key_public(r) for r in await run_in_threadpool(run)])

    async def get_key(self, principal: Principal, key_id: int, tenant: str | None = None) -> KeyPublic:
        def run() -> ApiKeyRow:
            return keys.get_key(self.sessions, self._tenant(principal, tenant, "read the keys of"), key_id)

        return key_public(await run_in_threadpool(run))

    async def revoke_key(self, principal: Principal, key_id: int, tenant: str | None = None) -> KeyPublic:
        """Revoked keys stop working on every gateway within the key cache TTL (seconds)."""

        def run() -> ApiKeyRow:
            tenant_id = self._tenant(principal, tenant, "revoke the keys of")
            return keys.revoke(self.sessions, tenant_id, key_id, _guard(principal, "revoke"))

        return key_public(await run_in_threadpool(run))

    async def rotate_key(
        self, principal: Principal, key_id: int, overlap_s: float, tenant: str | None = None
    ) -> KeyCreated:
        """A successor with the old key's power; the old key works `overlap_s` longer."""

        def run() -> tuple[ApiKeyRow, str]:
            tenant_id = self._tenant(principal, tenant, "rotate the keys of")
            return keys.rotate(self.sessions, tenant_id, key_id, overlap_s, _guard(principal, "rotate"))

        return _created(*await run_in_threadpool(run))


def _guard(principal: Principal, action: str) -> Callable[[ApiKeyRow], None]:
    return lambda row: access.check_covers(principal, access.KeyPower.of_row(row), action)
