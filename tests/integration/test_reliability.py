"""Faults inside one worker, in-process on the real Redis and PostgreSQL: one bad item in a
batch fails alone; a hung runner fails its request at the deadline and the worker reports not
ready until it recovers."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import orjson
import pytest
import torch

from tests.conftest import WorkerThread
from tests.faults import wrapping
from tests.integration.helpers import infer_body, register
from tests.models import TIMES3_SIGNATURE, FailsOnNegative, demo_onnx_bytes, torchscript_bytes
from workers.contract.redis_keys import GROUP, RedisKeys
from workers.inference import model_cache


async def _poll(cond, timeout: float = 20.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await cond()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _record_batches(monkeypatch, oom_above: int | None = None, values: bool = False) -> list:  # type: ignore[no-untyped-def]
    """Wrap the runner: record each batch's rows (or its first-column values); optionally fail
    big batches as CUDA OOM."""
    seen: list = []
    real = model_cache.load_runner

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        runner = real(*args, **kwargs)
        inner_run = runner.run

        calls = [0]

        def run(inputs):  # type: ignore[no-untyped-def]
            calls[0] += 1
            if calls[0] == 1:  # the warmup at load, not a batch
                return inner_run(inputs)
            rows = int(inputs["x"].shape[0])
            seen.append(inputs["x"][:, 0].tolist() if values else rows)
            if oom_above is not None and rows > oom_above:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return inner_run(inputs)

        runner.run = run
        return runner

    monkeypatch.setattr(model_cache, "load_runner", recording)
    return seen


async def _queued_then_served(client, settings, redis_client, model: str, xs: list[np.ndarray]) -> list:  # type: ignore[no-untyped-def]
    """All requests are queued before a worker exists, so its first read takes them as one batch."""
    tasks = [
        asyncio.create_task(
            client.post(f"/v2/models/{model}/infer", json=infer_body("x", x.tolist(), list(x.shape)))
        )
        for x in xs
    ]
    stream = _stream(settings)

    async def queued() -> bool:
        return int(redis_client.xlen(stream)) == len(xs)

    await _poll(queued, what="all requests queued")
    w = WorkerThread(settings).start()
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        w.stop()


def _stream(settings, version_id: int = 1) -> str:  # type: ignore[no-untyped-def]
    return RedisKeys(settings.redis_prefix).request_stream(version_id)


async def test_one_bad_item_fails_alone_inside_a_batch(client, settings, redis_client, monkeypatch) -> None:
    r = await register(
        client,
        "fragile",
        torchscript_bytes(FailsOnNegative()),
        "torchscript",
        signature=TIMES3_SIGNATURE,
        config={"max_batch_size": 64, "max_queue_delay_ms": 5},
    )
    assert r.status_code == 201, r.text
    seen = _record_batches(monkeypatch)
    xs = [np.full((1, 2), i + 1, dtype=np.float32) for i in range(8)]
    xs[5] = np.array([[-4.0, 1.0]], dtype=np.float32)
    responses = await _queued_then_served(client, settings, redis_client, "fragile", xs)
    for i, resp in enumerate(responses):
        if i == 5:
            assert resp.status_code == 500 and resp.json()["code"] == "model_error", resp.text
            assert "negative row" in resp.json()["error"] and "Traceback" not in resp.json()["error"]
        else:
            assert resp.status_code == 200, resp.text
            np.testing.assert_allclose(np.array(resp.json()["outputs"][0]["data"]), (xs[i] * 3).reshape(-1))
    assert seen[0] == 8  # the whole batch ran (and failed) together first
    assert sorted(seen[1:]) == [1] * 8  # then each item alone
    assert redis_client.xpending(_stream(settings), GROUP)["pending"] == 0


async def test_hung_runner_fails_at_deadline_and_worker_reports_not_ready(
    client, settings, redis_client, monkeypatch
) -> None:
    release = threading.Event()
    monkeypatch.setattr(
        model_cache, "load_runner", wrapping(model_cache.load_runner, hang_on=-7.0, release=release)
    )
    w = WorkerThread(settings).start()
    try:
        assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
        ok = infer_body("x", [1, 2, 3, 4], [1, 4])
        assert (await client.post("/v2/models/demo/infer", json=ok)).status_code == 200
        assert (await client.get("/v2/models/demo/ready")).status_code == 200

        hung = infer_body("x", [-7, 2, 3, 4], [1, 4], parameters={"timeout": 1_500_000})
        r = await client.post("/v2/models/demo/infer", json=hung)
        assert r.status_code == 504 and r.json()["code"] == "deadline_exceeded", r.text

        key = RedisKeys(settings.redis_prefix).worker(w.worker.worker_id)

        async def not_ready() -> bool:
            raw = redis_client.get(key)
            return raw is not None and orjson.loads(raw)["ready"] is False

        await _poll(not_ready, what="the hung worker to report not ready")
        assert (await client.get("/v2/models/demo/ready")).status_code == 400
        health = (await client.get("/v2/health/ready")).json()
        assert health["workers"] == 0

        release.set()  # the runner returns; the worker catches up and is ready again

        async def ready() -> bool:
            return (await client.get("/v2/models/demo/ready")).status_code == 200

        await _poll(ready, what="the worker to recover")
        assert (await client.post("/v2/models/demo/infer", json=ok)).status_code == 200

        async def drained() -> bool:
            return redis_client.xpending(_stream(settings), GROUP)["pending"] == 0

        await _poll(drained, what="the pending list to drain")
    finally:
        release.set()
        w.stop()


@pytest.mark.parametrize("timeout", [0, -5, "1s", True])
async def test_bad_timeout_parameter_is_400(client, timeout) -> None:  # type: ignore[no-untyped-def]
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    r = await client.post(
        "/v2/models/demo/infer", json=infer_body("x", [1, 2, 3, 4], [1, 4], parameters={"timeout": timeout})
    )
    assert r.status_code == 400, r.text


async def test_out_of_memory_splits_the_batch_and_retries(
    client, settings, redis_client, monkeypatch
) -> None:
    r = await register(
        client,
        "scaled",
        torchscript_bytes(FailsOnNegative()),
        "torchscript",
        signature=TIMES3_SIGNATURE,
        config={"max_batch_size": 64, "max_queue_delay_ms": 5},
    )
    assert r.status_code == 201, r.text
    seen = _record_batches(monkeypatch, oom_above=2)
    xs = [np.full((1, 2), i + 1, dtype=np.float32) for i in range(8)]
    responses = await _queued_then_served(client, settings, redis_client, "scaled", xs)
    for x, resp in zip(xs, responses, strict=True):
        assert resp.status_code == 200, resp.text
        np.testing.assert_allclose(np.array(resp.json()["outputs"][0]["data"]), (x * 3).reshape(-1))
    assert seen == [8, 4, 2, 2, 4, 2, 2]  # halved until it fits, never item by item
    assert redis_client.xpending(_stream(settings), GROUP)["pending"] == 0
