"""Helpers for the generation loop's tests: a gateway's side done by hand (XADD a request, read
its chunks from the reply stream) and the loop in a thread with its own metrics registry."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from prometheus_client import CollectorRegistry

from model_store.blobs import BlobStore
from model_store.registry import Registry
from workers.contract.generation import GenChunkMsg, GenParams, GenRequestMsg
from workers.contract.redis_keys import RedisKeys
from workers.generation.backends import BackendLoader
from workers.generation.config import GenConfig
from workers.generation.loop import GenerationLoop
from workers.generation.metrics import GenMetrics

GATEWAY = "gw1"
FAST = GenConfig(claim_idle_ms=500, claim_interval_ms=100, idle_block_ms=20)


def enqueue(
    r: redis.Redis,
    keys: RedisKeys,
    version_id: int,
    *,
    stream: bool = True,
    max_tokens: int = 8,
    prompt: str = "hello world",
    deadline_s: float = 30.0,
    request_id: str | None = None,
) -> str:
    rid = request_id or uuid.uuid4().hex
    now = int(time.time() * 1000)
    msg = GenRequestMsg(
        request_id=rid,
        reply_to=keys.reply_stream(GATEWAY),
        deadline_ms=now + int(deadline_s * 1000),
        enqueued_ms=now,
        tenant_id=1,
        model="chat",
        mode="completion",
        stream=stream,
        params=GenParams(max_tokens=max_tokens),
        prompt=prompt,
        key_id=7,
    )
    add_raw(r, keys, version_id, msg.to_fields())
    return rid


def add_raw(r: redis.Redis, keys: RedisKeys, version_id: int, fields: dict[bytes, bytes]) -> bytes:
    stream = keys.gen_stream(version_id)
    entry_id: Any = r.xadd(stream, fields)  # type: ignore[arg-type]
    r.sadd(keys.gen_streams, stream)
    return bytes(entry_id)


class Replies:
    """The gateway's reply stream, read from its start, chunks grouped by request id."""

    def __init__(self, r: redis.Redis, keys: RedisKeys) -> None:
        self.r, self.stream, self.last = r, keys.reply_stream(GATEWAY), b"0"
        self.chunks: dict[str, list[GenChunkMsg]] = {}

    def pump(self, block_ms: int = 100) -> None:
        resp: Any = self.r.xread({self.stream: self.last}, block=block_ms, count=1000)
        for _s, entries in resp or ():
            for eid, fields in entries:
                self.last = eid
                chunk = GenChunkMsg.from_fields(fields)
                self.chunks.setdefault(chunk.request_id, []).append(chunk)

    def until(self, rid: str, n: int = 0, timeout: float = 30.0) -> list[GenChunkMsg]:
        """The request's chunks once it is done (or has n chunks); fails after timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.chunks.get(rid, [])
            if (got and got[-1].done) or (n and len(got) >= n):
                return got
            self.pump()
        raise AssertionError(f"request {rid}: no end within {timeout}s, got {self.chunks.get(rid)}")


def text(chunks: list[GenChunkMsg]) -> str:
    return "".join(c.text for c in chunks)


@contextmanager
def running_loop(
    redis_url: str, prefix: str, registry: Registry, loader: BackendLoader, config: GenConfig = FAST
) -> Iterator[tuple[GenerationLoop, CollectorRegistry]]:
    reg = CollectorRegistry()
    blobs: BlobStore = registry.blobs
    loop = GenerationLoop(
        redis.Redis.from_url(redis_url), RedisKeys(prefix), registry, blobs, loader, config, GenMetrics(reg)
    )
    thread = threading.Thread(target=loop.run, kwargs={"drain_s": 1.0}, daemon=True)
    thread.start()
    try:
        yield loop, reg
    finally:
        loop.stop()
        thread.join(10)
