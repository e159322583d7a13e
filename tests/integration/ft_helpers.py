"""Helpers for fine-tune tests: a real Trainer in a thread, uploads, polling with a deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import redis

from model_store.blobs import BlobStore
from model_store.db import make_db_engine, make_sessionmaker
from model_store.jobs import JobStore
from model_store.registry import Registry
from service.settings import Settings
from tests.ft_data import MLP_SIGNATURE, jsonl, mlp_bytes, rows
from tests.integration.helpers import register
from workers.contract.finetune_check import FenceLimits
from workers.contract.redis_keys import RedisKeys
from workers.finetune.metrics import TrainerMetrics
from workers.finetune.trainer import Trainer, TrainerConfig

TERMINAL = ("succeeded", "failed", "cancelled")


class TrainerThread:
    def __init__(
        self,
        settings: Settings,
        lease_s: float = 3.0,
        metrics: TrainerMetrics | None = None,
        limits: FenceLimits | None = None,
    ) -> None:
        self._db_engine = make_db_engine(settings.resolved_database_url)
        sessions = make_sessionmaker(self._db_engine)
        blobs = BlobStore(settings.blob_dir)
        self.trainer = Trainer(
            redis.Redis.from_url(settings.resolved_redis_url),
            RedisKeys(settings.redis_prefix),
            Registry(sessions, blobs),
            blobs,
            JobStore(sessions),
            TrainerConfig(
                lease_s=lease_s,
                renew_interval_s=0.2,
                reconcile_interval_s=0.5,
                claim_idle_ms=2000,
                block_ms=200,
                limits=limits or FenceLimits.from_settings(settings),
            ),
            metrics,
        )
        self.thread = threading.Thread(target=self.trainer.run, daemon=True)

    def start(self) -> TrainerThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.trainer.stop()
        self.thread.join(30)
        self._db_engine.dispose()


async def upload(
    client: httpx.AsyncClient, data: bytes, name: str = "train.jsonl", headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": (name, data)}, headers=headers
    )


async def setup_classifier(client: httpx.AsyncClient, name: str = "clf") -> tuple[str, str]:
    """Register the MLP and upload a training and a validation file; returns the file ids."""
    r = await register(client, name, mlp_bytes(), "torchscript", signature=MLP_SIGNATURE)
    assert r.status_code == 201, r.text
    train = await upload(client, jsonl(*rows(320, 1)))
    valid = await upload(client, jsonl(*rows(120, 2)), "valid.jsonl")
    assert train.status_code == 201 and valid.status_code == 201, (train.text, valid.text)
    return train.json()["id"], valid.json()["id"]


def job_body(train: str, valid: str, **extra: Any) -> dict[str, Any]:
    hp = {"epochs": 4, "batch_size": 32, "learning_rate": 0.02, "optimizer": "adam"}
    hp.update(extra.pop("hyperparameters", {}))
    return {
        "model": "clf",
        "training_file": train,
        "validation_file": valid,
        "seed": 7,
        "suffix": "tuned",
        "hyperparameters": hp,
        **extra,
    }


async def wait_for(
    client: httpx.AsyncClient,
    job_id: str,
    statuses: tuple[str, ...] = TERMINAL,
    timeout: float = 120,
    pred: Any = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = (await client.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
        if job["status"] in statuses and (pred is None or pred(job)):
            return job
        assert time.monotonic() < deadline, f"job stuck: {job}"
        await asyncio.sleep(0.1)
