"""The OIP repository sees what the generation loop hosts: an hf-causal-lm version served by the
generation loop beside a worker is READY in POST /v2/repository/index and in its readiness
route (the worker's heartbeat carries the loop's versions, as `kiln worker` wires it)."""

from __future__ import annotations

from pathlib import Path

import httpx
import redis

import tests.conftest as base
from model_store.registry import Registry
from service.settings import Settings
from tests.conftest import WorkerThread
from tests.generation_backend import load, register_gen_version
from tests.integration.gen_helpers import Replies, enqueue, running_loop
from tests.integration.test_reliability import _poll
from workers.contract.redis_keys import RedisKeys


async def _chat_entry(client: httpx.AsyncClient) -> dict[str, str]:
    index = (await client.post("/v2/repository/index")).json()
    (entry,) = [e for e in index if e["name"] == "chat"]
    return dict(entry)


async def test_a_version_the_generation_loop_serves_is_ready_in_the_repository_index(
    client: httpx.AsyncClient, settings: Settings, registry: Registry, redis_prefix: str, tmp_path: Path
) -> None:
    vid = register_gen_version(registry, tmp_path)
    assert (await _chat_entry(client))["state"] == "UNAVAILABLE"  # nothing serves it yet
    keys = RedisKeys(redis_prefix)
    r = redis.Redis.from_url(base.REDIS_URL)
    with running_loop(base.REDIS_URL, redis_prefix, registry, load) as (loop, _metrics):
        worker = WorkerThread(settings)
        worker.worker.extra_info = loop.heartbeat  # what `kiln worker` does (service/cli/run_worker.py)
        worker.start()
        try:
            Replies(r, keys).until(enqueue(r, keys, vid))  # the first request loads the version
            assert loop.loaded_ids() == [vid]

            async def ready() -> bool:
                return (await _chat_entry(client))["state"] == "READY"

            await _poll(ready, what="chat READY in the repository index")
            assert await _chat_entry(client) == {
                "name": "chat",
                "version": "1",
                "state": "READY",
                "reason": "",
            }
            assert (await client.get("/v2/models/chat/ready")).status_code == 200
        finally:
            worker.stop()
