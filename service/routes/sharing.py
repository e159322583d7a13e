"""Model sharing and usage reports. Thin: parse, call on."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from service.deps import ManagePrincipal, RegistryDep, StateDep
from service.tenancy import sharing, usage
from service.tenancy.access_schemas import SharingPublic, SharingSet, UsageReport

router = APIRouter(tags=["tenants"])


@router.get("/v1/models/{name}/sharing", response_model=SharingPublic)
async def get_sharing(name: str, principal: ManagePrincipal, registry: RegistryDep) -> SharingPublic:
    return await sharing.get_sharing(registry, principal.tenant_id, name)


@router.put("/v1/models/{name}/sharing", response_model=SharingPublic)
async def set_sharing(
    name: str, body: SharingSet, principal: ManagePrincipal, registry: RegistryDep
) -> SharingPublic:
    """Share a model: other tenants call it as `{owner}~{name}` on the /v2 routes; with
    `allow_finetune` they may also fine-tune it (their copies stop serving when it is withdrawn)."""
    return await sharing.set_sharing(registry, principal.tenant_id, name, body)


@router.get("/v1/usage", response_model=UsageReport)
async def get_usage(
    principal: ManagePrincipal,
    state: StateDep,
    start: Annotated[
        date | None, Query(alias="from", description="first UTC day (default: month start)")
    ] = None,
    end: Annotated[date | None, Query(alias="to", description="last UTC day (default: today)")] = None,
    group_by: Literal["model", "key", "day"] = "model",
) -> UsageReport:
    return await usage.report(state.engine, principal.tenant_id, start, end, group_by)
