"""Tenants (admin) and API keys (each tenant manages its own). Thin: parse, call on."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import AdminPrincipal, ManagePrincipal, SettingsDep, StateDep
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
from service.tenancy.limits import Limits

router = APIRouter(tags=["tenants"])
# admin keys only: act on another tenant's keys (any other key is 403 for naming one)
OfTenant = Annotated[
    str | None, Query(max_length=63, description="admin only: the tenant whose keys these are")
]


@router.post("/v1/tenants", status_code=201, response_model=TenantPublic)
async def create_tenant(body: TenantCreate, _admin: AdminPrincipal, state: StateDep) -> TenantPublic:
    return await state.key_admin.create_tenant(body.name, body.limits)


@router.get("/v1/tenants", response_model=TenantList)
async def list_tenants(_admin: AdminPrincipal, state: StateDep) -> TenantList:
    return await state.key_admin.list_tenants()


@router.put("/v1/tenants/{tenant}/limits", response_model=TenantPublic)
async def set_tenant_limits(
    tenant: str, body: Limits, _admin: AdminPrincipal, state: StateDep
) -> TenantPublic:
    return await state.key_admin.set_tenant_limits(tenant, body)


@router.post("/v1/keys", status_code=201, response_model=KeyCreated)
async def create_key(body: KeyCreate, principal: ManagePrincipal, state: StateDep) -> KeyCreated:
    """A key with at most its creator's power; restrictions not asked for are inherited."""
    return await state.key_admin.create_key(principal, body)


@router.get("/v1/keys", response_model=KeyList)
async def list_keys(principal: ManagePrincipal, state: StateDep, tenant: OfTenant = None) -> KeyList:
    return await state.key_admin.list_keys(principal, tenant)


@router.get("/v1/keys/{key_id}", response_model=KeyPublic)
async def get_key(
    key_id: int, principal: ManagePrincipal, state: StateDep, tenant: OfTenant = None
) -> KeyPublic:
    return await state.key_admin.get_key(principal, key_id, tenant)


@router.delete("/v1/keys/{key_id}", response_model=KeyPublic)
async def revoke_key(
    key_id: int, principal: ManagePrincipal, state: StateDep, tenant: OfTenant = None
) -> KeyPublic:
    """Revoked keys stop working on every gateway within the key cache TTL (seconds)."""
    return await state.key_admin.revoke_key(principal, key_id, tenant)


@router.post("/v1/keys/{key_id}/rotate", status_code=201, response_model=KeyCreated)
async def rotate_key(
    key_id: int,
    principal: ManagePrincipal,
    state: StateDep,
    settings: SettingsDep,
    body: KeyRotate | None = None,
    tenant: OfTenant = None,
) -> KeyCreated:
    overlap = (
        body.overlap_s if body is not None and body.overlap_s is not None else settings.key_rotation_overlap_s
    )
    return await state.key_admin.rotate_key(principal, key_id, overlap, tenant)
