"""Fine-tuning jobs (OpenAI's job, event and checkpoint shapes). Thin: parse, call the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from service.deps import FinetuneDep, FinetunePrincipal, ManagePrincipal
from service.finetune import checkpoints
from service.finetune.public import parse_event_after
from service.finetune.schemas import (
    CheckpointList,
    DryRunPublic,
    EventList,
    JobCreate,
    JobList,
    JobPublic,
    MetricsPublic,
)
from service.schemas import VersionPublic

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", response_model=JobPublic | DryRunPublic)
async def create_job(
    body: JobCreate,
    principal: FinetunePrincipal,
    svc: FinetuneDep,
    dry_run: bool = False,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> JobPublic | DryRunPublic:
    return await svc.create(principal, body, idempotency_key, dry_run)


@router.get("", response_model=JobList)
async def list_jobs(
    principal: FinetunePrincipal, svc: FinetuneDep, after: str | None = None, limit: Limit = 20
) -> JobList:
    return await svc.records.list_jobs(principal.tenant_id, after, limit)


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> JobPublic:
    return await svc.records.get_job(principal.tenant_id, job_id)


@router.post("/{job_id}/cancel", response_model=JobPublic)
async def cancel_job(job_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> JobPublic:
    return await svc.records.act(principal.tenant_id, job_id, "cancel")


@router.post("/{job_id}/pause", response_model=JobPublic)
async def pause_job(job_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> JobPublic:
    return await svc.records.act(principal.tenant_id, job_id, "pause")


@router.post("/{job_id}/resume", response_model=JobPublic)
async def resume_job(job_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> JobPublic:
    return await svc.records.act(principal.tenant_id, job_id, "resume")


@router.get("/{job_id}/events", response_model=EventList)
async def list_events(
    job_id: str,
    request: Request,
    principal: FinetunePrincipal,
    svc: FinetuneDep,
    after: str | None = None,
    limit: Limit = 100,
    stream: bool = False,
) -> EventList | StreamingResponse:
    start = parse_event_after(after)
    if stream or "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(
            await svc.records.events_stream(principal.tenant_id, job_id, start),  # 404 before streaming
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    return await svc.records.events(principal.tenant_id, job_id, start, limit)


@router.get("/{job_id}/checkpoints", response_model=CheckpointList)
async def list_checkpoints(job_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> CheckpointList:
    return await svc.records.checkpoints(principal.tenant_id, job_id)


@router.post("/{job_id}/checkpoints/{checkpoint_id}/promote", status_code=201, response_model=VersionPublic)
async def promote_checkpoint(
    job_id: str, checkpoint_id: str, principal: ManagePrincipal, svc: FinetuneDep
) -> VersionPublic:
    """The checkpoint's weights as the next version of the job's model (needs `manage`)."""
    return await checkpoints.promote_checkpoint(svc.state, svc.store, principal, job_id, checkpoint_id)


@router.get("/{job_id}/metrics", response_model=MetricsPublic)
async def get_metrics(job_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> MetricsPublic:
    return await svc.records.metrics(principal.tenant_id, job_id)
