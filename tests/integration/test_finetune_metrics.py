"""Fine-tune metrics on real PostgreSQL and Redis: the gateway's jobs-by-status gauge (counted
from the database at scrape time) and what a real trainer records about its steps and jobs."""

from __future__ import annotations

import re

import httpx
from prometheus_client import CollectorRegistry

from service.ops_metrics import FINETUNE_STATUSES
from service.settings import Settings
from tests.integration.ft_helpers import TrainerThread, job_body, setup_classifier, wait_for
from tests.integration.helpers import operator_metrics
from workers.finetune.metrics import OUTCOMES, TrainerMetrics


async def _jobs_by_status(client: httpx.AsyncClient) -> dict[str, float]:
    found = re.findall(r'^kiln_finetune_jobs\{status="([a-z_]+)"\} (\S+)$', operator_metrics(client), re.M)
    assert len(found) == len({s for s, _ in found}), "a status is rendered twice"
    return {status: float(value) for status, value in found}


async def test_gateway_counts_jobs_by_status_at_scrape_time(client: httpx.AsyncClient) -> None:
    assert await _jobs_by_status(client) == dict.fromkeys(FINETUNE_STATUSES, 0.0)
    train, valid = await setup_classifier(client)
    ids = [
        (await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid))).json()["id"] for _ in "abc"
    ]
    assert (await _jobs_by_status(client))["queued"] == 3  # no trainer: they wait
    assert (await client.post(f"/v1/fine_tuning/jobs/{ids[0]}/cancel")).status_code == 200
    counts = await _jobs_by_status(client)
    assert counts == {**dict.fromkeys(FINETUNE_STATUSES, 0.0), "queued": 2, "cancelled": 1}


async def test_trainer_records_steps_epochs_and_outcomes(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    registry = CollectorRegistry()
    trainer = TrainerThread(settings, metrics=TrainerMetrics(registry)).start()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    try:
        train, valid = await setup_classifier(client)
        r = await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid))  # 4 epochs of 10 steps
        job = await wait_for(client, r.json()["id"])
        assert job["status"] == "succeeded", job
        await wait_for(
            client, job["id"], pred=lambda _j: value("kiln_trainer_jobs_total", outcome="succeeded")
        )
        assert value("kiln_trainer_steps_total") == 40
        assert value("kiln_trainer_step_seconds_count") == 40
        assert (value("kiln_trainer_step_seconds_sum") or 0) > 0
        assert value("kiln_trainer_epoch_duration_seconds_count") == 4
        curve = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics")).json()["train"]
        assert value("kiln_trainer_loss") == curve[-1]["train_loss"]  # the last step's
        assert value("kiln_trainer_busy") == 0

        slow = job_body(train, valid, hyperparameters={"epochs": 200, "batch_size": 4})
        job_id = (await client.post("/v1/fine_tuning/jobs", json=slow)).json()["id"]
        await wait_for(client, job_id, ("running",), pred=lambda j: (j["progress"] or {}).get("step", 0) > 0)
        assert (await client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")).status_code == 200
        await wait_for(
            client,
            job_id,
            ("cancelled",),
            pred=lambda _j: value("kiln_trainer_jobs_total", outcome="cancelled"),
        )
        ended = {o: value("kiln_trainer_jobs_total", outcome=o) for o in OUTCOMES}
        assert ended == {**dict.fromkeys(OUTCOMES, 0.0), "succeeded": 1, "cancelled": 1}
    finally:
        trainer.stop()
