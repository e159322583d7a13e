"""The TorchScript fine-tune path on CUDA (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from tests.integration.ft_helpers import TrainerThread, job_body, setup_classifier, wait_for

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


async def test_finetune_on_cuda(client, settings) -> None:
    train, valid = await setup_classifier(client)
    trainer = TrainerThread(settings).start()
    try:
        r = await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid))
        job = await wait_for(client, r.json()["id"])
    finally:
        trainer.stop()
    assert job["status"] == "succeeded", job
    events = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/events")).json()["data"]
    assert any("training started on cuda" in e["message"] for e in events)
    assert job["result"]["metrics"]["accuracy"] > job["result"]["parent_metrics"]["accuracy"]
