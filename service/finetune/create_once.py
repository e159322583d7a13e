"""Creating a job-like row once per idempotency key, then telling the trainers: the one flow that
fine-tune jobs, sweeps and compression jobs share (service/finetune/jobs.py, sweeps.py,
service/compress/service.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from starlette.concurrency import run_in_threadpool

from model_store.jobs import JobStore
from service.errors import Unprocessable
from service.finetune.records import dispatch
from workers.contract.messages import EngineClient

T = TypeVar("T")


class _Row(Protocol):
    id: Any


R = TypeVar("R", bound=_Row)


async def create_once(
    store: JobStore,
    engine: EngineClient,
    tenant_id: int,
    idempotency_key: str | None,
    body: bytes,
    create: Callable[[tuple[int, str] | None], R],
    existing: Callable[[str], Awaitable[T]],
    public: Callable[[R], T],
) -> T:
    """With a key: the object the key already made (`existing`), or a 422 when the key was used
    with another body; else `create(idem)` in a worker thread (the key released if it fails),
    dispatched to the trainers and answered as `public(row)`."""
    idem: tuple[int, str] | None = None
    if idempotency_key:
        digest = hashlib.sha256(body).hexdigest()
        try:
            found = await run_in_threadpool(store.reserve_key, tenant_id, idempotency_key, digest)
        except ValueError as exc:
            raise Unprocessable(str(exc)) from exc
        if found is not None:
            return await existing(found)
        idem = (tenant_id, idempotency_key)
    try:
        row = await run_in_threadpool(create, idem)
    except BaseException:
        if idem is not None:
            await run_in_threadpool(store.release_key, *idem)
        raise
    await dispatch(engine, row.id)
    return public(row)
