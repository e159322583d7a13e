"""The fault-injection test: 1,000 requests across 3 worker processes while workers are killed
(kill -9) and restarted at random. Every request gets exactly one answer, correct for its own
input or a clean error, and the stream's pending list is empty at the end."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import redis

from tests.conftest import REDIS_URL
from tests.e2e.conftest import AUTH, poll, register_http
from tests.e2e.harness import Stack
from tests.models import demo_onnx_bytes, demo_reference
from workers.contract.redis_keys import GROUP, RedisKeys

pytestmark = pytest.mark.e2e
REQUESTS = 1000
WORKERS = ("w1", "w2", "w3")
CLEAN_ERRORS = {503: "unavailable", 504: "deadline_exceeded", 500: "model_error"}


class Chaos(threading.Thread):
    """Kills a random worker with SIGKILL at random moments and starts it again."""

    def __init__(self, stack: Stack, seed: int) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.rng = random.Random(seed)
        self.procs = {name: stack.start_worker(name) for name in WORKERS}
        self.kills = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(self.rng.uniform(0.2, 1.2)):
                name = self.rng.choice(WORKERS)
                self.procs[name].kill9()
                self.kills += 1
                self.procs[name] = self.stack.start_worker(name)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


async def _one(client: httpx.AsyncClient, i: int, x: np.ndarray) -> tuple[int, int, dict]:
    body = {
        "id": f"r{i}",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}],
    }
    try:
        resp = await client.post("/v2/models/demo/infer", json=body)
    except httpx.HTTPError as exc:  # a transport failure is not an answer
        return i, -1, {"error": type(exc).__name__}
    return i, resp.status_code, resp.json()


async def _send_all(url: str, xs: list[np.ndarray], chaos: Chaos) -> list[tuple[int, int, dict]]:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120, limits=limits) as client:
        gate = asyncio.Semaphore(24)

        async def paced(i: int) -> tuple[int, int, dict]:
            async with gate:
                return await _one(client, i, xs[i])

        tasks = []
        for i in range(REQUESTS):
            if i and i % 250 == 0:  # make sure workers die while traffic flows, not after it
                kills = chaos.kills + 1
                while chaos.kills < kills and chaos.error is None:
                    await asyncio.sleep(0.02)
            tasks.append(asyncio.create_task(paced(i)))
            await asyncio.sleep(0.005)
        return list(await asyncio.gather(*tasks))


def test_thousand_requests_while_workers_are_killed(make_stack, redis_prefix) -> None:
    stack = make_stack(KILN_REQUEST_TIMEOUT_S="30")
    stack.start_gateway()
    chaos = Chaos(stack, seed=7)
    register_http(
        stack.url, "demo", demo_onnx_bytes(), "onnx", {"max_batch_size": 16, "max_queue_delay_ms": 2}
    )
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((int(rng.integers(1, 4)), 4)).astype(np.float32) for _ in range(REQUESTS)]
    started = time.monotonic()
    chaos.start()
    try:
        results = asyncio.run(_send_all(stack.url, xs, chaos))
    finally:
        chaos.stop.set()
        chaos.join(60)
    elapsed = time.monotonic() - started
    assert chaos.error is None, chaos.error

    statuses: Counter[int] = Counter()
    assert sorted(i for i, _, _ in results) == list(range(REQUESTS))  # one answer per request
    for i, status, body in results:
        statuses[status] += 1
        if status == 200:
            assert body["id"] == f"r{i}"
            y = np.array(body["outputs"][0]["data"], dtype=np.float32).reshape(xs[i].shape[0], 3)
            np.testing.assert_allclose(y, demo_reference(xs[i]), atol=1e-5)
        else:
            assert CLEAN_ERRORS.get(status) == body.get("code"), (status, body)
    print(
        f"\nchaos: {REQUESTS} requests in {elapsed:.1f}s, {chaos.kills} kill -9s, statuses {dict(statuses)}"
    )

    r = redis.Redis.from_url(REDIS_URL)
    stream = RedisKeys(redis_prefix).request_stream(1)
    poll(
        lambda: r.xpending(stream, GROUP)["pending"] == 0 and r.xlen(stream) == 0,
        timeout=60,
        what="an empty pending list",
    )
    assert chaos.kills >= 3
    assert all(p.alive() for p in chaos.procs.values())
    assert statuses[200] >= REQUESTS * 0.95  # workers die; requests are re-run, not lost
