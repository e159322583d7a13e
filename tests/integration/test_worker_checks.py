"""KILN_CHECKS=worker: the gateway asks a worker (over the real Redis) to run its model checks.
Uploads pass or are refused exactly as with local checks; a refused upload leaves no blob and no
file in the pending area; no worker answering in time is a 503 with nothing registered; a check
message cannot name a path outside the worker's pending area."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import httpx
import pytest
import redis

from model_store.blobs import BlobStore
from model_store.fence import fence_available
from service.checks import NEEDS, runs_locally
from service.cli.demo import demo_onnx_bytes
from service.settings import Settings
from tests.conftest import REDIS_URL, WorkerThread
from tests.fence_models import reads_file
from tests.integration.ft_helpers import job_body, setup_classifier
from tests.integration.helpers import register
from tests.models import FailsOnNegative, torchscript_bytes
from workers.contract.messages import CheckReplyMsg, CheckRequestMsg
from workers.contract.redis_keys import RedisKeys
from workers.inference.check_server import CheckServer

pytestmark = pytest.mark.skipif(not fence_available(), reason="Landlock is not available on this kernel")
SIG = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"checks": "worker", "check_timeout_s": 20.0})


def _stored(settings: Settings) -> tuple[list[Path], list[Path]]:
    root = settings.blob_dir
    return sorted((root / "sha256").rglob("*")), sorted((root / "tmp").iterdir())


def test_auto_runs_locally_only_what_this_environment_can_import() -> None:
    assert runs_locally("local", "torchscript") and not runs_locally("worker", "onnx")
    for what, needs in NEEDS.items():  # the test environment has every runtime
        assert runs_locally("auto", what), (what, needs)


async def test_uploads_are_checked_by_a_worker_and_a_refused_one_leaves_nothing(
    client: httpx.AsyncClient, settings: Settings, worker: WorkerThread, tmp_path: Path
) -> None:
    r = await register(client, "onnx-m", demo_onnx_bytes(), "onnx")
    assert r.status_code == 201, r.text
    r = await register(client, "ts-m", torchscript_bytes(FailsOnNegative()), "torchscript", SIG)
    assert r.status_code == 201, r.text
    blobs_before, pending = _stored(settings)
    assert pending == []
    secret = tmp_path / "secret.key"
    secret.write_bytes(b"s" * 64)
    r = await register(client, "hostile", reads_file(str(secret), 64), "torchscript", SIG)
    assert r.status_code == 422, r.text
    assert "ssss" not in r.text
    assert (await client.get("/v1/models/hostile")).json()["versions"] == []
    assert _stored(settings) == (blobs_before, [])  # no blob, nothing pending
    r = await register(client, "not-onnx", b"\x08\x01garbage", "onnx")
    assert r.status_code == 422, r.text


async def test_a_finetune_job_model_check_runs_on_a_worker(
    client: httpx.AsyncClient, worker: WorkerThread
) -> None:
    train, valid = await setup_classifier(client)
    body = job_body(train, valid, hyperparameters={"freeze": ["net.0"]})
    r = await client.post("/v1/fine_tuning/jobs?dry_run=true", json=body)
    assert r.status_code == 200, r.text
    estimate = r.json()["estimate"]
    assert 0 < estimate["trainable_parameters"] < estimate["total_parameters"], estimate
    bad = job_body(train, valid, hyperparameters={"freeze": ["net"]})
    r = await client.post("/v1/fine_tuning/jobs?dry_run=true", json=bad)
    assert r.status_code == 422, r.text
    assert "leaves no parameter to train" in r.text


@pytest.mark.serial
async def test_no_worker_is_a_503_within_the_limit_and_nothing_is_registered(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    check = client.app.state.kiln.registry.check  # type: ignore[attr-defined]
    check.local = dataclasses.replace(check.local, timeout_s=1.0)
    t0 = time.monotonic()
    upload = asyncio.create_task(register(client, "lonely", demo_onnx_bytes(), "onnx"))
    health: list[float] = []
    while not upload.done():  # the wait for a worker holds a thread, never the event loop
        h0 = time.monotonic()
        assert (await client.get("/v2/health/live")).status_code == 200
        health.append(time.monotonic() - h0)
        await asyncio.sleep(0.02)
    r = await upload
    elapsed = time.monotonic() - t0
    assert len(health) > 10 and max(health) < 0.5, health
    assert r.status_code == 503, r.text
    assert "no worker answered the model check within 1 s" in r.json()["error"]
    assert elapsed < 1 + 3, elapsed
    assert (await client.get("/v1/models/lonely")).json()["versions"] == []
    assert _stored(settings) == ([], [])
    r = redis.Redis.from_url(REDIS_URL)
    try:
        assert r.xlen(RedisKeys(settings.redis_prefix).checks) == 0  # the unanswered request was withdrawn
    finally:
        r.close()


def test_a_check_message_cannot_name_a_path(settings: Settings, redis_prefix: str) -> None:
    keys = RedisKeys(redis_prefix)
    blobs = BlobStore(settings.blob_dir)
    r = redis.Redis.from_url(REDIS_URL)
    server = CheckServer(r, keys, blobs, "required", "t")
    outside = settings.blob_dir.parent / "outside.onnx"
    outside.write_bytes(demo_onnx_bytes())
    base = {"format": "onnx", "signature": None, "timeout_s": 10, "memory_bytes": 1 << 30}
    limits = {"max_unpacked_bytes": 1 << 20, "max_members": 8, "max_ratio": 10, "max_parameters": 100}
    try:
        for name in ("../../outside.onnx", str(outside), "upload-../x", "sha256"):
            reply_to = keys.check_reply(f"c{abs(hash(name))}")
            args = {**base, "upload": name, "limits": limits}
            msg = CheckRequestMsg("c1", "upload", reply_to, int((time.time() + 10) * 1000), args)
            r.xadd(keys.checks, msg.to_fields())  # type: ignore[arg-type]
            assert server.once(block_ms=1000) == 1
            (_s, [(_e, fields)]), *_ = r.xread({reply_to: "0"}, count=1)
            reply = CheckReplyMsg.from_fields(fields)
            assert not reply.ok and "pending area" in reply.error, (name, reply)
        expired = CheckRequestMsg("c2", "upload", keys.check_reply("c2"), 0, {**base, "upload": "x"})
        r.xadd(keys.checks, expired.to_fields())  # type: ignore[arg-type]
        assert server.once(block_ms=1000) == 1
        assert r.xlen(keys.check_reply("c2")) == 0  # its gateway gave up: not run, not answered
        assert r.xlen(keys.checks) == 0
    finally:
        r.close()
