"""The foundation on real processes: a gateway and two `kiln worker`s on free ports, against the
real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
import redis

from tests.conftest import ADMIN_KEY, REDIS_URL
from tests.e2e.harness import Stack, metric_sum
from tests.models import demo_onnx_bytes, demo_reference
from workers.contract.redis_keys import GROUP

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _register_demo(url: str, config: str) -> int:
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
        assert c.post("/v1/models", json={"name": "demo"}).status_code == 201
        r = c.post(
            "/v1/models/demo/versions",
            data={"format": "onnx", "config": config},
            files={"file": ("m.onnx", demo_onnx_bytes())},
        )
        assert r.status_code == 201, r.text
        return int(r.json()["version"])


async def _fire(url: str, xs: np.ndarray, concurrency: int) -> list[httpx.Response]:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60, limits=limits) as c:

        async def one(i: int) -> httpx.Response:
            async with sem:
                body = {
                    "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": xs[i].tolist()}]
                }
                return await c.post("/v2/models/demo/infer", json=body)

        return await asyncio.gather(*(one(i) for i in range(len(xs))))


def _check_all_correct(responses: list[httpx.Response], xs: np.ndarray) -> None:
    bad = [(i, r.status_code, r.text[:200]) for i, r in enumerate(responses) if r.status_code != 200]
    assert not bad, bad[:5]
    got = np.array([r.json()["outputs"][0]["data"] for r in responses])
    np.testing.assert_allclose(got, demo_reference(xs), atol=1e-5)


def _worker_metric(stack: Stack, name: str) -> float:
    return sum(
        metric_sum(httpx.get(f"http://127.0.0.1:{port}/metrics").text, name)
        for port in stack.worker_ports.values()
    )


def _pending(prefix: str) -> int:
    r = redis.Redis.from_url(REDIS_URL)
    try:
        return sum(int(r.xpending(s, GROUP)["pending"]) for s in r.smembers(f"{prefix}:streams"))
    finally:
        r.close()


async def test_200_concurrent_requests_batched_across_two_workers(stack: Stack) -> None:
    stack.start_gateway()
    stack.start_worker("worker-1")
    stack.start_worker("worker-2")
    _register_demo(stack.url, '{"max_batch_size": 32, "max_queue_delay_ms": 10}')
    xs = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)

    responses = await _fire(stack.url, xs, concurrency=200)

    _check_all_correct(responses, xs)
    items = _worker_metric(stack, "kiln_inference_count_total")
    batches = _worker_metric(stack, "kiln_inference_exec_count_total")
    assert items == 200
    assert items / batches > 1, f"mean batch size {items / batches}"
    # the batch-size histogram agrees
    assert _worker_metric(stack, "kiln_batch_size_sum") / _worker_metric(stack, "kiln_batch_size_count") > 1
    stack.check_alive()


async def test_kill_9_of_a_worker_under_load_loses_nothing(stack: Stack, stack_env) -> None:
    stack.start_gateway()
    victim = stack.start_worker("worker-1")
    stack.start_worker("worker-2")
    _register_demo(stack.url, '{"max_batch_size": 16, "max_queue_delay_ms": 40}')
    prefix = stack_env["KILN_REDIS_PREFIX"]
    xs = np.random.default_rng(2).normal(size=(600, 4)).astype(np.float32)
    load = asyncio.create_task(_fire(stack.url, xs, concurrency=48))

    # kill -9 the victim at a moment it holds read-but-unacknowledged entries
    r = redis.Redis.from_url(REDIS_URL)
    tag = f"-{victim.popen.pid}-"
    held = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not load.done():
        for stream in r.smembers(f"{prefix}:streams"):
            try:
                consumers = r.xinfo_consumers(stream, GROUP)
            except redis.ResponseError:  # the workers have not created the group yet
                continue
            for consumer in consumers:
                if tag in consumer["name"].decode() and consumer["pending"] > 0:
                    held = consumer["pending"]
        if held:
            victim.kill9()
            break
        await asyncio.sleep(0.002)
    r.close()
    assert held, "the victim never held pending entries while under load"

    responses = await load
    _check_all_correct(responses, xs)  # every request answered, and correctly
    deadline = time.monotonic() + 10
    while _pending(prefix) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert _pending(prefix) == 0
