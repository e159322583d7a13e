"""Dispatch of fine-tune jobs on a Redis stream with a consumer group of trainers.

The stream carries only job ids; the database says what a job is and whether it still needs a
trainer. Trainers ack and delete an entry once they hold the job's lease in the database, so the
stream holds only dispatches not yet taken, and a job queued in the database but missing from the
stream (Redis restarted, a dispatch that failed) is simply enqueued again.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from workers.contract.groups import ensure_group, is_nogroup
from workers.contract.redis_keys import RedisKeys

GROUP = "trainers"


async def dispatch(client: aioredis.Redis, keys: RedisKeys, job_id: str) -> None:
    await client.xadd(keys.finetune_jobs, {b"job": job_id.encode()})


class JobQueue:
    def __init__(self, client: redis.Redis, keys: RedisKeys, consumer: str) -> None:
        self.r = client
        self.stream = keys.finetune_jobs
        self.consumer = consumer
        self._grouped = False

    def ensure_group(self) -> None:
        ensure_group(self.r, self.stream, GROUP)
        self._grouped = True

    def forget_group(self) -> None:
        """After a reconnect the server may be new: create the group again before reading."""
        self._grouped = False

    def read(self, block_ms: int) -> list[tuple[bytes, str]]:
        if not self._grouped:
            self.ensure_group()
        try:
            resp: Any = self.r.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=1, block=block_ms)
        except ResponseError as exc:
            if not is_nogroup(exc):
                raise
            self._grouped = False
            return []
        return [(eid, f[b"job"].decode()) for _s, entries in resp or () for eid, f in entries if f]

    def claim_stale(self, min_idle_ms: int) -> list[tuple[bytes, str]]:
        """Entries a trainer read but never acknowledged (it died before taking the job)."""
        if not self._grouped:
            self.ensure_group()
        resp = self.r.xautoclaim(self.stream, GROUP, self.consumer, min_idle_time=min_idle_ms, count=16)
        claimed = resp[1] if resp else []
        return [(eid, f[b"job"].decode()) for eid, f in claimed if f]

    def done(self, entry_id: bytes) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.xack(self.stream, GROUP, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()

    def enqueue(self, job_id: str) -> None:
        self.r.xadd(self.stream, {b"job": job_id.encode()})

    def present(self) -> set[str]:
        """Job ids with a dispatch in the stream (taken or not yet)."""
        out: set[str] = set()
        entries: Any = self.r.xrange(self.stream, count=100_000)
        for _eid, fields in entries:
            if b"job" in fields:
                out.add(fields[b"job"].decode())
        return out
