"""Batching policy over HTTP on the real Redis: bounded queues (503 + Retry-After), priority
levels (separate streams, served first), default and per-request timeouts (504, no compute)."""

from __future__ import annotations

import asyncio

from tests.conftest import WorkerThread
from tests.integration.helpers import infer_body, register
from tests.integration.test_reliability import _poll, _record_batches
from tests.models import TIMES3_SIGNATURE, FailsOnNegative, torchscript_bytes
from workers.contract.redis_keys import GROUP, RedisKeys


async def _register(client, **config) -> None:  # type: ignore[no-untyped-def]
    r = await register(
        client,
        "m",
        torchscript_bytes(FailsOnNegative()),
        "torchscript",
        signature=TIMES3_SIGNATURE,
        config=config,
    )
    assert r.status_code == 201, r.text


def _post(client, value: float, **params):  # type: ignore[no-untyped-def]
    body = infer_body("x", [[value, value]], [1, 2], **({"parameters": params} if params else {}))
    return asyncio.create_task(client.post("/v2/models/m/infer", json=body))


async def test_queue_bound_gives_503_with_retry_after(client, settings, redis_client) -> None:
    await _register(client, max_queue_size=3)
    stream = RedisKeys(settings.redis_prefix).request_stream(1)
    queued = [_post(client, i + 1) for i in range(3)]

    async def full() -> bool:
        return int(redis_client.xlen(stream)) == 3

    await _poll(full, what="a full queue")
    r = await client.post("/v2/models/m/infer", json=infer_body("x", [[1, 1]], [1, 2]))
    assert r.status_code == 503 and r.json()["code"] == "queue_full", r.text
    assert int(r.headers["retry-after"]) >= 1
    assert int(redis_client.xlen(stream)) == 3  # the stream stays bounded
    w = WorkerThread(settings).start()
    try:
        for task in queued:
            assert (await task).status_code == 200
        r = await client.post("/v2/models/m/infer", json=infer_body("x", [[1, 1]], [1, 2]))
        assert r.status_code == 200
    finally:
        w.stop()


async def test_higher_priority_is_served_first(client, settings, redis_client, monkeypatch) -> None:
    await _register(client, max_batch_size=2, max_queue_delay_ms=1, priority_levels=3)
    seen = _record_batches(monkeypatch, values=True)
    keys = RedisKeys(settings.redis_prefix)
    low = [_post(client, 10 + i) for i in range(4)]  # default level: 3, the lowest

    async def queued(stream: str, n: int):  # type: ignore[no-untyped-def]
        async def check() -> bool:
            return int(redis_client.xlen(stream)) == n

        await _poll(check, what=f"{n} entries on {stream}")

    await queued(keys.request_stream(1, 3), 4)
    high = [_post(client, 1, priority=1), _post(client, 2, priority=1)]
    await queued(keys.request_stream(1, 1), 2)
    r = await client.post(
        "/v2/models/m/infer", json=infer_body("x", [[1, 1]], [1, 2], parameters={"priority": 4})
    )
    assert r.status_code == 400  # only 3 levels
    w = WorkerThread(settings).start()
    try:
        for task in [*low, *high]:
            assert (await task).status_code == 200
    finally:
        w.stop()
    assert sorted(seen[0]) == [1.0, 2.0]  # the first batch is the high-priority pair
    for level in (1, 3):
        assert redis_client.xpending(keys.request_stream(1, level), GROUP)["pending"] == 0


async def test_timeouts_fail_with_504_and_spend_no_compute(
    client, settings, redis_client, monkeypatch
) -> None:
    await _register(client, default_timeout_ms=300)
    seen = _record_batches(monkeypatch, values=True)
    r = await client.post("/v2/models/m/infer", json=infer_body("x", [[7, 7]], [1, 2]))
    assert r.status_code == 504 and r.json()["code"] == "deadline_exceeded"
    r = await client.post(
        "/v2/models/m/infer", json=infer_body("x", [[8, 8]], [1, 2], parameters={"timeout": 200_000})
    )
    assert r.status_code == 504
    stream = RedisKeys(settings.redis_prefix).request_stream(1)
    assert int(redis_client.xlen(stream)) == 2
    w = WorkerThread(settings).start()  # the worker finds both expired and drops them
    try:

        async def drained() -> bool:
            return (
                int(redis_client.xlen(stream)) == 0 and redis_client.xpending(stream, GROUP)["pending"] == 0
            )

        await _poll(drained, what="expired entries dropped")
        r = await client.post(
            "/v2/models/m/infer", json=infer_body("x", [[9, 9]], [1, 2], parameters={"timeout": 20_000_000})
        )
        assert r.status_code == 200
    finally:
        w.stop()
    assert seen == [[9.0]]  # the expired requests never reached the model


async def test_instances_run_batches_concurrently(client, settings, monkeypatch) -> None:
    """Two batches meet at a barrier inside the model: only two concurrent instances pass it."""
    import threading

    from workers.inference import model_cache

    barrier = threading.Barrier(2, timeout=15)
    real = model_cache.load_runner
    runners: list[object] = []

    def meeting(*args, **kwargs):  # type: ignore[no-untyped-def]
        runner = real(*args, **kwargs)
        runners.append(runner)
        inner = runner.run

        def run(inputs):  # type: ignore[no-untyped-def]
            if inputs["x"].any():  # not the warmup (zeros)
                barrier.wait()
            return inner(inputs)

        runner.run = run
        return runner

    monkeypatch.setattr(model_cache, "load_runner", meeting)
    await _register(client, max_batch_size=1, instances=2)
    w = WorkerThread(settings).start()
    try:
        a, b = await asyncio.gather(_post(client, 1), _post(client, 2))
    finally:
        w.stop()
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    assert len(runners) == 2  # one runner per instance
