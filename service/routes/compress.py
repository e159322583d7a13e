"""Compression jobs (quantize, prune, distill, export). Thin: parse, call the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query

from service.compress.schemas import CompressionCreate, CompressionJobList, CompressionJobPublic
from service.deps import CompressDep, FinetunePrincipal
from service.finetune.public import parse_event_after
from service.finetune.schemas import EventList

router = APIRouter(prefix="/v1/compression/jobs", tags=["compression"])
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", response_model=CompressionJobPublic)
async def create_job(
    body: CompressionCreate,
    principal: FinetunePrincipal,
    svc: CompressDep,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> CompressionJobPublic:
    return await svc.create(principal, body, idempotency_key)


@router.get("", response_model=CompressionJobList)
async def list_jobs(
    principal: FinetunePrincipal, svc: CompressDep, after: str | None = None, limit: Limit = 20
) -> CompressionJobList:
    return await svc.list_jobs(principal.tenant_id, after, limit)


@router.get("/{job_id}", response_model=CompressionJobPublic)
async def get_job(job_id: str, principal: FinetunePrincipal, svc: CompressDep) -> CompressionJobPublic:
    return await svc.get_job(principal.tenant_id, job_id)


@router.post("/{job_id}/cancel", response_model=CompressionJobPublic)
async def cancel_job(job_id: str, principal: FinetunePrincipal, svc: CompressDep) -> CompressionJobPublic:
    return await svc.cancel(principal.tenant_id, job_id)


@router.get("/{job_id}/events", response_model=EventList)
async def list_events(
    job_id: str, principal: FinetunePrincipal, svc: CompressDep, after: str | None = None, limit: Limit = 100
) -> EventList:
    return await svc.events(principal.tenant_id, job_id, parse_event_after(after), limit)
