"""Model sharing: who else may call (and fine-tune) a tenant's model, as the API shows it.

Each call runs its database work in one worker thread (never on the event loop)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from model_store.db import TenantRow
from model_store.registry import SHARED_SEP, Registry
from service.tenancy.access_schemas import SharingPublic, SharingSet


def _sharing(registry: Registry, tenant_id: int, name: str) -> SharingPublic:
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


def _set_sharing(registry: Registry, tenant_id: int, name: str, body: SharingSet) -> SharingPublic:
    registry.set_sharing(tenant_id, name, body.visibility, body.tenants, body.allow_finetune)
    return _sharing(registry, tenant_id, name)


async def get_sharing(registry: Registry, tenant_id: int, name: str) -> SharingPublic:
    """How the tenant's model `name` is shared (NotFound: no such model)."""
    return await run_in_threadpool(_sharing, registry, tenant_id, name)


async def set_sharing(registry: Registry, tenant_id: int, name: str, body: SharingSet) -> SharingPublic:
    """Share the model as `body` says; answers the new sharing."""
    return await run_in_threadpool(_set_sharing, registry, tenant_id, name, body)
