"""Model sharing and usage reports. Thin: parse, call on."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from model_store.db import TenantRow
from model_store.registry import SHARED_SEP
from service.deps import ManagePrincipal, RegistryDep, StateDep
from service.tenancy import usage
from service.tenancy.access_schemas import SharingPublic, SharingSet, UsageReport

router = APIRouter(tags=["tenants"])


def _sharing(registry: RegistryDep, tenant_id: int, name: str) -> SharingPublic:
    visibility, tenants, allow_finetune = registry.sharing(tenant_id, name)
    with registry.sessions() as s:
        row = s.get(TenantRow, tenant_id)
        owner = row.name if row is not None else ""
    return SharingPublic.model_validate(
        {
            "model": name,
            "visibility": visibility,
            "tenants": tenants,
            "allow_finetune": allow_finetune,
            "shared_name": f"{owner}{SHARED_SEP}{name}",
        }
    )


@router.get("/v1/models/{name}/sharing", response_model=SharingPublic)
async def get_sharing(name: str, principal: ManagePrincipal, registry: RegistryDep) -> SharingPublic:
    return await run_in_threadpool(_sharing, registry, principal.tenant_id, name)


@router.put("/v1/models/{name}/sharing", response_model=SharingPublic)
async def set_sharing(
    name: str, body: SharingSet, principal: ManagePrincipal, registry: RegistryDep
) -> SharingPublic:
    """Share a model: other tenants call it as `{owner}~{name}` on the /v2 routes; with
    `allow_finetune` they may also fine-tune it (their copies stop serving when it is withdrawn)."""

    def apply() -> SharingPublic:
        registry.set_sharing(principal.tenant_id, name, body.visibility, body.tenants, body.allow_finetune)
        return _sharing(registry, principal.tenant_id, name)

    return await run_in_threadpool(apply)


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
    today = datetime.now(UTC).date()
    end = end or today
    start = start or end.replace(day=1)
    return await usage.report(
        state.engine.redis, state.settings.redis_prefix, principal.tenant_id, start, end, group_by
    )
