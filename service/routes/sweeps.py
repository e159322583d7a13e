"""Hyperparameter sweeps (`fine_tuning.sweep`): each trial is a fine-tune job. Thin: parse, call."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query

from service.deps import FinetunePrincipal, SweepDep
from service.finetune.sweep_schemas import SweepCreate, SweepList, SweepPromote, SweepPublic

router = APIRouter(prefix="/v1/fine_tuning/sweeps", tags=["fine-tuning"])
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", response_model=SweepPublic)
async def create_sweep(
    body: SweepCreate,
    principal: FinetunePrincipal,
    svc: SweepDep,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> SweepPublic:
    return await svc.create(principal, body, idempotency_key)


@router.get("", response_model=SweepList)
async def list_sweeps(
    principal: FinetunePrincipal, svc: SweepDep, after: str | None = None, limit: Limit = 20
) -> SweepList:
    return await svc.list(principal.tenant_id, after, limit)


@router.get("/{sweep_id}", response_model=SweepPublic)
async def get_sweep(sweep_id: str, principal: FinetunePrincipal, svc: SweepDep) -> SweepPublic:
    return await svc.get(principal.tenant_id, sweep_id)


@router.post("/{sweep_id}/cancel", response_model=SweepPublic)
async def cancel_sweep(sweep_id: str, principal: FinetunePrincipal, svc: SweepDep) -> SweepPublic:
    return await svc.cancel(principal.tenant_id, sweep_id)


@router.post("/{sweep_id}/promote", response_model=SweepPublic)
async def promote_sweep(
    sweep_id: str, body: SweepPromote, principal: FinetunePrincipal, svc: SweepDep
) -> SweepPublic:
    return await svc.promote(principal.tenant_id, sweep_id, body.alias)
