"""Tenants (admin) and API keys (each tenant manages its own). Thin: parse, call on."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from model_store.db import ApiKeyRow, TenantRow
from service.deps import AdminPrincipal, ManagePrincipal, SettingsDep, StateDep
from service.errors import Forbidden
from service.tenancy import access, tenants
from service.tenancy import api_keys as keys
from service.tenancy.access_schemas import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyPublic,
    KeyRotate,
    TenantCreate,
    TenantList,
    TenantPublic,
)
from service.tenancy.api_keys import Principal
from service.tenancy.limits import Limits

router = APIRouter(tags=["tenants"])


def _tenant_public(row: TenantRow) -> TenantPublic:
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


@router.post("/v1/tenants", status_code=201, response_model=TenantPublic)
async def create_tenant(body: TenantCreate, _admin: AdminPrincipal, state: StateDep) -> TenantPublic:
    row = await run_in_threadpool(tenants.create_tenant, state.sessions, body.name, body.limits)
    return _tenant_public(row)


@router.get("/v1/tenants", response_model=TenantList)
async def list_tenants(_admin: AdminPrincipal, state: StateDep) -> TenantList:
    rows = await run_in_threadpool(tenants.list_tenants, state.sessions)
    return TenantList(data=[_tenant_public(r) for r in rows])


@router.put("/v1/tenants/{tenant}/limits", response_model=TenantPublic)
async def set_tenant_limits(
    tenant: str, body: Limits, _admin: AdminPrincipal, state: StateDep
) -> TenantPublic:
    row = await run_in_threadpool(tenants.set_limits, state.sessions, tenant, body)
    return _tenant_public(row)


def _key_tenant(principal: Principal, body: KeyCreate, state: StateDep) -> int:
    """The tenant the new key belongs to (another tenant: admin keys only, see service/access)."""
    if body.tenant is None:
        return principal.tenant_id
    if not principal.has("admin"):  # before any lookup: tenant names are not for them to probe
        raise Forbidden("only an admin key may create keys for another tenant")
    return tenants.by_name(state.sessions, body.tenant).id


@router.post("/v1/keys", status_code=201, response_model=KeyCreated)
async def create_key(body: KeyCreate, principal: ManagePrincipal, state: StateDep) -> KeyCreated:
    """A key with at most its creator's power; restrictions not asked for are inherited."""

    def create() -> KeyCreated:
        tenant_id = _key_tenant(principal, body, state)
        power = access.minted_power(
            principal, tenant_id, body.scopes, body.models, body.expires_in_s, body.limits, body.priority_cap
        )
        row, secret = keys.create_key(
            state.sessions,
            tenant_id,
            sorted(power.scopes),
            name=body.name,
            expires_at=power.expires_at,
            allowed_models=sorted(power.models) if power.models is not None else None,
            limits=power.limits,
            priority_cap=power.priority_cap,
        )
        return _created(row, secret)

    return await run_in_threadpool(create)


def _guard(principal: Principal, action: str) -> Callable[[ApiKeyRow], None]:
    return lambda row: access.check_covers(principal, access.KeyPower.of_row(row), action)


@router.get("/v1/keys", response_model=KeyList)
async def list_keys(principal: ManagePrincipal, state: StateDep) -> KeyList:
    rows = await run_in_threadpool(keys.list_keys, state.sessions, principal.tenant_id)
    return KeyList(data=[key_public(r) for r in rows])


@router.get("/v1/keys/{key_id}", response_model=KeyPublic)
async def get_key(key_id: int, principal: ManagePrincipal, state: StateDep) -> KeyPublic:
    return key_public(await run_in_threadpool(keys.get_key, state.sessions, principal.tenant_id, key_id))


@router.delete("/v1/keys/{key_id}", response_model=KeyPublic)
async def revoke_key(key_id: int, principal: ManagePrincipal, state: StateDep) -> KeyPublic:
    """Revoked keys stop working on every gateway within the key cache TTL (seconds)."""
    return key_public(
        await run_in_threadpool(
            keys.revoke, state.sessions, principal.tenant_id, key_id, _guard(principal, "revoke")
        )
    )


@router.post("/v1/keys/{key_id}/rotate", status_code=201, response_model=KeyCreated)
async def rotate_key(
    key_id: int,
    principal: ManagePrincipal,
    state: StateDep,
    settings: SettingsDep,
    body: KeyRotate | None = None,
) -> KeyCreated:
    overlap = (
        body.overlap_s if body is not None and body.overlap_s is not None else settings.key_rotation_overlap_s
    )
    row, secret = await run_in_threadpool(
        keys.rotate, state.sessions, principal.tenant_id, key_id, overlap, _guard(principal, "rotate")
    )
    return _created(row, secret)
