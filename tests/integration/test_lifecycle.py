"""Model lifecycle on a worker: warmup at load (a failing warmup means not loaded, not ready),
least-recently-used unloading under a memory budget, and (on a GPU) unloading really frees
device memory."""

from __future__ import annotations

import dataclasses

import numpy as np
import orjson
import pytest
import torch

from tests.conftest import WorkerThread
from tests.integration.helpers import infer_body, register
from tests.integration.test_reliability import _poll
from tests.models import TIMES3_SIGNATURE, FailsOnNegative, demo_onnx_bytes, torchscript_bytes
from tests.serving_models import WIDE_SIGNATURE, Wide
from workers.contract.redis_keys import RedisKeys
from workers.inference import model_cache


def _loaded(redis_client, settings, w: WorkerThread) -> list[int]:  # type: ignore[no-untyped-def]
    raw = redis_client.get(RedisKeys(settings.redis_prefix).worker(w.worker.worker_id))
    return orjson.loads(raw)["loaded"] if raw else []


async def test_failed_warmup_means_not_loaded(client, worker: WorkerThread, monkeypatch) -> None:
    real = model_cache.load_runner

    def cold(*args, **kwargs):  # type: ignore[no-untyped-def]
        runner = real(*args, **kwargs)
        inner = runner.run

        def run(inputs):  # type: ignore[no-untyped-def]
            if not any(a.any() for a in inputs.values()):  # the warmup sends zeros
                raise RuntimeError('kernel cache corrupt\n  File "/secret/path.py", line 3')
            return inner(inputs)

        runner.run = run
        return runner

    monkeypatch.setattr(model_cache, "load_runner", cold)
    r = await register(
        client, "picky", torchscript_bytes(FailsOnNegative()), "torchscript", signature=TIMES3_SIGNATURE
    )
    assert r.status_code == 201, r.text
    r = await client.post("/v2/repository/models/picky/load")
    assert r.status_code == 422 and "warmup failed" in r.json()["error"], r.text
    assert "/secret" not in r.json()["error"]
    assert (await client.get("/v2/models/picky/ready")).status_code == 400
    r = await client.post("/v2/models/picky/infer", json=infer_body("x", [[1, 2]], [1, 2]))
    assert r.status_code == 503  # never served by a model that did not warm up
    (entry,) = (await client.post("/v2/repository/index")).json()
    assert entry["state"] == "UNAVAILABLE" and entry["reason"].startswith("warmup failed")


async def test_memory_budget_unloads_least_recently_used(client, settings, redis_client) -> None:
    data = demo_onnx_bytes()
    for _ in range(3):
        assert (await register(client, "demo", data, "onnx")).status_code == 201
    w = WorkerThread(settings)
    w.worker.config = dataclasses.replace(w.worker.config, memory_budget_bytes=2 * len(data) + 1)
    w.start()
    try:
        body = infer_body("x", [1, 2, 3, 4], [1, 4])

        async def infer(v: int) -> None:
            r = await client.post(f"/v2/models/demo/versions/{v}/infer", json=body)
            assert r.status_code == 200, r.text

        await infer(1)
        await infer(2)
        assert _loaded(redis_client, settings, w) == [1, 2]
        await infer(1)  # 1 is now the most recently used
        await infer(3)  # room for two: 2 goes
        assert _loaded(redis_client, settings, w) == [1, 3]
        assert (await client.get("/v2/models/demo/versions/2/ready")).status_code == 400
        await infer(2)  # loads again on demand; 1 is the least recently used now
        assert _loaded(redis_client, settings, w) == [2, 3]
    finally:
        w.stop()


def _device_used() -> int:
    """Bytes in use on the GPU by every process (the model runs in a fenced child, not here)."""
    free, total = torch.cuda.mem_get_info()
    return int(total - free)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_gpu_load_unload_50_times_frees_device_memory(client, settings, worker: WorkerThread) -> None:
    r = await register(
        client,
        "wide",
        torchscript_bytes(Wide()),
        "torchscript",
        signature=WIDE_SIGNATURE,
        config={"device": "cuda"},
    )
    assert r.status_code == 201, r.text
    x = np.ones((2, 2048), dtype=np.float32)
    torch.cuda.init()
    start = _device_used()  # this process's own context included
    peak = 0
    for _ in range(50):
        assert (await client.post("/v2/repository/models/wide/load")).status_code == 200
        r = await client.post("/v2/models/wide/infer", json=infer_body("x", x.tolist(), [2, 2048]))
        assert r.status_code == 200, r.text
        peak = max(peak, _device_used())
        assert (await client.post("/v2/repository/models/wide/unload")).status_code == 200

    async def freed() -> bool:  # the last child's context goes when that process has exited
        return _device_used() <= start + (32 << 20)

    await _poll(freed, what="device memory back to where it started")
    end = _device_used()
    print(f"\ngpu memory in use: start {start >> 20} MiB, peak {peak >> 20} MiB, end {end >> 20} MiB")
    assert peak - start >= 16 << 20  # the weights really were on the device


async def test_load_waits_for_warm_and_unload_frees(
    client, settings, redis_client, worker: WorkerThread
) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    assert (await client.get("/v2/models/demo/ready")).status_code == 400
    assert (
        await client.post("/v2/repository/models/demo/load", json={"parameters": {"version": "1"}})
    ).status_code == 200
    assert _loaded(redis_client, settings, worker) == [1]
    assert (await client.get("/v2/models/demo/ready")).status_code == 200
    assert (await client.post("/v2/repository/models/demo/unload")).status_code == 200
    assert _loaded(redis_client, settings, worker) == []

    async def gone() -> bool:
        return worker.worker.cache.models == {}

    await _poll(gone, what="the runner dropped")
