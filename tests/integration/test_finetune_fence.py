"""Fine-tune model code runs only inside a fence: a hostile base model, planted in the store past
every upload check, can neither read nor write a file outside its artifact in the trainer, and
the gateway's model check gives up on a model that never finishes without blocking the gateway."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from model_store.fence import fence_available
from model_store.registry import Registry
from service.settings import Settings
from tests.ft_data import jsonl, rows
from tests.ft_hostile import LoopsOnLoad, ReadsInForward, ReadsOnLoad, WritesWhileTraining, plant
from tests.integration.ft_helpers import TrainerThread, job_body, setup_classifier, upload, wait_for
from workers.contract import finetune_check
from workers.contract.finetune_check import CheckFailed, FenceLimits
from workers.finetune import fence as ft_fence
from workers.finetune.job import evaluate_in_fence

pytestmark = pytest.mark.skipif(not fence_available(), reason="Landlock is not available on this kernel")


@pytest.fixture
def unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fenced children skip the load-time static checks (which refuse these models by their
    ops), so that what the fence alone does is seen."""
    monkeypatch.setattr(ft_fence, "TRAIN_TARGET", "tests.fence_targets:train_unchecked")
    monkeypatch.setattr(finetune_check, "EVALUATE_TARGET", "tests.fence_targets:evaluate_unchecked")


@pytest.fixture
def trainer(settings: Settings) -> Iterator[TrainerThread]:
    t = TrainerThread(settings).start()
    yield t
    t.stop()


def _hostile(kind: str, secret: Path, planted: Path) -> torch.nn.Module:
    if kind == "forward":
        return ReadsInForward(str(secret))
    if kind == "setstate":
        return ReadsOnLoad(str(secret))
    return WritesWhileTraining(str(planted))


async def _everything_about(client: httpx.AsyncClient, job_id: str) -> str:
    parts = [
        (await client.get(f"/v1/fine_tuning/jobs/{job_id}{p}")).text for p in ("", "/events", "/metrics")
    ]
    parts.append((await client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")).text)
    return "\n".join(parts)


@pytest.mark.parametrize("kind", ["forward", "setstate", "write_while_training"])
async def test_hostile_base_model_cannot_reach_outside_its_artifact_in_the_trainer(
    client: httpx.AsyncClient,
    settings: Settings,
    registry: Registry,
    unchecked: None,
    trainer: TrainerThread,
    tmp_path: Path,
    kind: str,
) -> None:
    secret_bytes = b"kiln_secret_" + secrets.token_hex(16).encode()
    secret, planted = tmp_path / "admin.key", tmp_path / "planted"
    secret.write_bytes(secret_bytes)
    tenant = registry.ensure_tenant(settings.default_tenant)
    plant(registry, tenant, "evil", _hostile(kind, secret, planted))
    x, y = rows(80, 3)
    file_id = (await upload(client, jsonl(x, y))).json()["id"]
    body = {
        "model": "evil",
        "training_file": file_id,
        "validation_split": 0.25,
        "seed": 1,
        "hyperparameters": {"epochs": 2, "batch_size": 20},
    }
    r = await client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    job = await wait_for(client, r.json()["id"])

    assert job["status"] == "failed", job  # the model's own call was refused in the fence
    assert job["error"]["code"] == "model_error", job["error"]
    assert "Traceback" not in job["error"]["message"]
    assert not planted.exists()
    seen = await _everything_about(client, job["id"])
    assert secret_bytes.decode() not in seen and secret_bytes[:16].decode() not in seen
    for blob in settings.blob_dir.rglob("*"):
        if blob.is_file():
            assert secret_bytes[:16] not in blob.read_bytes(), blob
    # the trainer is unharmed and takes the next job
    train, valid = await setup_classifier(client)
    r = await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid, hyperparameters={"epochs": 1}))
    job = await wait_for(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    # promotion's evaluation of a version runs fenced too: the result scores what the job recorded
    ctx, row = trainer.trainer.ctx, trainer.trainer.store.job_by_id(job["id"])
    assert row is not None
    result = registry.resolve(tenant, "clf-tuned", 1)
    metrics = await asyncio.to_thread(evaluate_in_fence, ctx, row, result)
    assert metrics["accuracy"] == pytest.approx(job["result"]["metrics"]["accuracy"], abs=1e-6)
    evil = registry.resolve(tenant, "evil", 1)
    if kind == "write_while_training":  # it writes only while training: evaluating it is harmless
        await asyncio.to_thread(evaluate_in_fence, ctx, row, evil)
    else:
        with pytest.raises(CheckFailed, match="Permission denied"):
            await asyncio.to_thread(evaluate_in_fence, ctx, row, evil)
    assert not planted.exists()


CPU_S = 12


async def test_a_training_process_that_dies_fails_its_job_and_the_trainer_goes_on(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The CPU limit kills the fenced process mid-job: the job fails and says so; the trainer
    takes the next job."""
    # one torch thread: CPU time is summed over threads, and spinning OpenMP threads on a loaded
    # machine could spend the quick job's budget too. The budget holds the child's own imports
    # (torch's lazily imported submodules cost seconds of CPU on a slow 2-core machine) and one
    # quick epoch; the slow job's 1000 epochs need far more.
    t = TrainerThread(settings, limits=FenceLimits(cpu_s=CPU_S, threads=1)).start()
    try:
        train, valid = await setup_classifier(client)
        slow = job_body(train, valid, hyperparameters={"epochs": 1000, "batch_size": 1})
        job = await wait_for(client, (await client.post("/v1/fine_tuning/jobs", json=slow)).json()["id"])
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "training_process_died", job["error"]
        assert "the training process died" in job["error"]["message"]
        assert "CPU time limit" in job["error"]["message"], job["error"]
        quick = job_body(train, valid, hyperparameters={"epochs": 1})
        job = await wait_for(client, (await client.post("/v1/fine_tuning/jobs", json=quick)).json()["id"])
        assert job["status"] == "succeeded", job
    finally:
        t.stop()


@pytest.fixture
def check_timeout_s() -> float:
    return 60.0  # the default: a legitimate check must never meet the limit, however loaded the machine


@pytest.fixture
def settings(settings: Settings, check_timeout_s: float) -> Settings:
    return settings.model_copy(update={"finetune_check_timeout_s": check_timeout_s})


@pytest.mark.serial
@pytest.mark.parametrize("check_timeout_s", [4.0])
async def test_a_model_check_that_never_finishes_is_a_422_and_the_gateway_stays_responsive(
    client: httpx.AsyncClient, settings: Settings, registry: Registry
) -> None:
    tenant = registry.ensure_tenant(settings.default_tenant)
    plant(registry, tenant, "spin", LoopsOnLoad())
    x, y = rows(80, 3)
    file_id = (await upload(client, jsonl(x, y))).json()["id"]
    body = {
        "model": "spin",
        "training_file": file_id,
        "validation_split": 0.25,
        "hyperparameters": {"freeze": ["bias"]},  # a freeze list: the gateway must build the model
    }
    for query in ("", "?dry_run=true"):
        t0 = time.monotonic()
        create = asyncio.create_task(client.post(f"/v1/fine_tuning/jobs{query}", json=body))
        health: list[float] = []
        while not create.done():
            h0 = time.monotonic()
            assert (await client.get("/v2/health/live")).status_code == 200
            health.append(time.monotonic() - h0)
            await asyncio.sleep(0.05)
        r = await create
        elapsed = time.monotonic() - t0
        assert r.status_code == 422, r.text
        assert "did not finish within 4 s" in json.dumps(r.json())
        assert elapsed < 4.0 + 2.0, elapsed
        assert len(health) > 10 and max(health) < 1.0, health  # never blocked for the check's 4 s
    assert (await client.get("/v1/fine_tuning/jobs")).json()["data"] == []
