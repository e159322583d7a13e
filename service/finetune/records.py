"""Fine-tuning records as the API reads and changes them: dataset files, jobs, their events,
checkpoints and metrics, job actions (cancel, pause, resume). Each call runs its database work
in one worker thread (never on the event loop) and answers the public shape."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from model_store.blob_refs import delete_file, prune_ended
from model_store.blobs import BlobStore
from model_store.db import FileRow
from model_store.jobs import TERMINAL, JobStore
from service.finetune.public import (
    checkpoint_public,
    event_public,
    file_public,
    job_public,
    metrics_public,
)
from service.finetune.schemas import (
    CheckpointList,
    EventList,
    FileList,
    FilePublic,
    JobList,
    JobPublic,
    MetricsPublic,
)
from workers.contract.errors import EngineError
from workers.contract.messages import EngineClient

log = logging.getLogger("kiln.finetune")

# action -> (the states it applies to, the state it leads to, the event it records)
ACTIONS = {
    "cancel": (("validating_files", "queued", "running", "paused"), "cancelled", "job cancelled"),
    "pause": (("queued", "running"), "paused", "job paused; resume to continue from the last checkpoint"),
    "resume": (("paused",), "queued", "job resumed; queued"),
}


async def dispatch(engine: EngineClient, job_id: str) -> None:
    """Tell the trainers; if the queue is down, the trainers' reconciler finds the job later."""
    try:
        await engine.dispatch_finetune(job_id)
    except EngineError as exc:
        log.warning("job %s queued in the database, not dispatched (%s)", job_id, type(exc).__name__)


class FinetuneRecords:
    def __init__(self, store: JobStore, blobs: BlobStore, engine: EngineClient) -> None:
        self.store = store
        self.blobs = blobs
        self.engine = engine

    # files ---------------------------------------------------------------------------------------
    async def list_files(
        self, tenant_id: int, after: str | None, limit: int, purpose: str | None
    ) -> FileList:
        rows, more = await run_in_threadpool(self.store.list_files, tenant_id, after, limit, purpose)
        return FileList(data=[file_public(r) for r in rows], has_more=more)

    async def get_file(self, tenant_id: int, file_id: str) -> FilePublic:
        return file_public(await run_in_threadpool(self.store.get_file, tenant_id, file_id))

    async def delete_file(self, tenant_id: int, file_id: str) -> None:
        """NotFound, or Conflict saying what still needs it; the blob goes once nothing does."""
        await run_in_threadpool(delete_file, self.store.sessions, self.blobs, tenant_id, file_id)

    async def file_row(self, tenant_id: int, file_id: str) -> FileRow:
        return await run_in_threadpool(self.store.get_file, tenant_id, file_id)

    # jobs ----------------------------------------------------------------------------------------
    async def list_jobs(self, tenant_id: int, after: str | None, limit: int) -> JobList:
        rows, more = await run_in_threadpool(self.store.list_jobs, tenant_id, after, limit)
        return JobList(data=[job_public(r) for r in rows], has_more=more)

    async def get_job(self, tenant_id: int, job_id: str) -> JobPublic:
        return job_public(await run_in_threadpool(self.store.get_job, tenant_id, job_id))

    async def act(self, tenant_id: int, job_id: str, action: str) -> JobPublic:
        """Cancel, pause or resume a job (Conflict when its state does not allow it)."""
        allowed, to, message = ACTIONS[action]
        row = await run_in_threadpool(self.store.transition, tenant_id, job_id, allowed, to, message)
        if to == "queued":
            await dispatch(self.engine, job_id)
        if to == "cancelled":  # ended: keep the best and the last checkpoints only
            keep = int(row.spec.get("keep_checkpoints", 1))
            await run_in_threadpool(prune_ended, self.store.sessions, self.blobs, job_id, keep)
        return job_public(row)

    async def events(self, tenant_id: int, job_id: str, after: int, limit: int) -> EventList:
        rows, more = await run_in_threadpool(self.store.events, tenant_id, job_id, after, limit)
        return EventList(data=[event_public(r) for r in rows], has_more=more)

    async def checkpoints(self, tenant_id: int, job_id: str) -> CheckpointList:
        rows = await run_in_threadpool(self.store.checkpoints, tenant_id, job_id)
        return CheckpointList(data=[checkpoint_public(r) for r in rows])

    async def metrics(self, tenant_id: int, job_id: str) -> MetricsPublic:
        return metrics_public(await run_in_threadpool(self.store.metrics, tenant_id, job_id))

    async def events_stream(self, tenant_id: int, job_id: str, after: int) -> AsyncIterator[bytes]:
        """Server-sent events: every new event, until the job is finished. NotFound (before
        the first byte) for a job that is not the tenant's."""
        await run_in_threadpool(self.store.get_job, tenant_id, job_id)
        return self._events_stream(tenant_id, job_id, after)

    async def _events_stream(self, tenant_id: int, job_id: str, after: int) -> AsyncIterator[bytes]:
        idle = 0
        while True:
            rows, _more = await run_in_threadpool(self.store.events, tenant_id, job_id, after, 100)
            for ev in rows:
                after = ev.id
                data = event_public(ev).model_dump_json()
                yield f"id: {ev.id}\nevent: {ev.type}\ndata: {data}\n\n".encode()
            if not rows:
                job = await run_in_threadpool(self.store.get_job, tenant_id, job_id)
                if job.status in TERMINAL:
                    yield b"event: done\ndata: {}\n\n"
                    return
                idle += 1
                if idle % 30 == 0:
                    yield b": keep-alive\n\n"
                await asyncio.sleep(0.5)
