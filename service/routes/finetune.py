"""Fine-tuning jobs (OpenAI's job, event and checkpoint shapes). Thin: parse, call the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.deps import FinetuneDep, FinetunePrincipal
from service.finetune.jobs import (
    checkpoint_public,
    event_public,
    job_public,
    metrics_public,
    parse_event_after,
)
from service.finetune.schemas import (
    CheckpointList,
    DryRunPublic,
    EventList,
    JobCreate,
    JobList,
    JobPublic,
    MetricsPublic,
)

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
    rows, more = await run_in_threadpool(svc.store.list_jobs, principal.tenant_id, after, limit)
    return JobList(data=[job_public(r) for r in rows], has_more=more)


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> JobPublic:
    return job_public(await run_in_threadpool(svc.store.get_job, principal.tenant_id, job_id))


_ACTIONS = {
    "cancel": (("validating_files", "queued", "running", "paused"), "cancelled", "job cancelled"),
    "pause": (("queued", "running"), "paused", "job paused; resume to continue from the last checkpoint"),
    "resume": (("paused",), "queued", "job resumed; queued"),
}


async def _act(svc: FinetuneDep, tenant_id: int, job_id: str, action: str) -> JobPublic:
    allowed, to, message = _ACTIONS[action]
    row = await run_in_threadpool(svc.store.transition, tenant_id, job_id, allowed, to, message)
    if to == "queued":
        await svc.dispatch(job_id)
    return job_public(row)


@router.post("/{job_id}/cancel", response_model=JobPublic)
async def cancel_job(job_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> JobPublic:
    return await _act(svc, principal.tenant_id, job_id, "cancel")


@router.post("/{job_id}/pause", response_model=JobPublic)
async def pause_job(job_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> JobPublic:
    return await _act(svc, principal.tenant_id, job_id, "pause")


@router.post("/{job_id}/resume", response_model=JobPublic)
async def resume_job(job_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> JobPublic:
    return await _act(svc, principal.tenant_id, job_id, "resume")


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
        await run_in_threadpool(svc.store.get_job, principal.tenant_id, job_id)  # 404 before streaming
        return StreamingResponse(
            svc.events_stream(principal.tenant_id, job_id, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    rows, more = await run_in_threadpool(svc.store.events, principal.tenant_id, job_id, start, limit)
    return EventList(data=[event_public(r) for r in rows], has_more=more)


@router.get("/{job_id}/checkpoints", response_model=CheckpointList)
async def list_checkpoints(job_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> CheckpointList:
    rows = await run_in_threadpool(svc.store.checkpoints, principal.tenant_id, job_id)
    return CheckpointList(data=[checkpoint_public(r) for r in rows])


@router.get("/{job_id}/metrics", response_model=MetricsPublic)
async def get_metrics(job_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> MetricsPublic:
    return metrics_public(await run_in_threadpool(svc.store.metrics, principal.tenant_id, job_id))
