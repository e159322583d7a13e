"""Fine-tuning over HTTP with a real trainer (in a thread) on real PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from service.settings import Settings
from tests.conftest import WorkerThread, make_key
from tests.ft_data import MLP_SIGNATURE, jsonl, mlp_bytes, rows
from tests.integration.ft_helpers import TrainerThread, job_body, setup_classifier, upload, wait_for
from tests.integration.helpers import infer_body, register
from tests.models import demo_onnx_bytes


@pytest.fixture
def trainer(settings: Settings) -> Iterator[TrainerThread]:
    t = TrainerThread(settings).start()
    yield t
    t.stop()


async def test_finetune_job_becomes_a_servable_version(client, trainer, worker: WorkerThread) -> None:
    train, valid = await setup_classifier(client)
    body = job_body(train, valid, promote="production", keep_checkpoints=4)
    r = await client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "queued" and job["seed"] == 7
    job = await wait_for(client, job["id"])
    assert job["status"] == "succeeded", job
    assert job["fine_tuned_model"] == "clf-tuned:1"
    result = job["result"]
    assert result["metrics"]["accuracy"] > result["parent_metrics"]["accuracy"]
    assert result["promoted"] is True

    metrics = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics")).json()
    assert [v["epoch"] for v in metrics["valid"]] == [1, 2, 3, 4]
    assert [t["step"] for t in metrics["train"]] == list(range(1, 4 * 10 + 1))
    ckpts = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")).json()["data"]
    assert [c["epoch"] for c in ckpts] == [1, 2, 3, 4] and ckpts[-1]["step_number"] == 40
    assert "accuracy" in ckpts[-1]["metrics"]
    events = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/events")).json()["data"]
    assert any(e["message"] == "epoch 4 done" for e in events)
    assert events[-1]["message"].startswith("fine-tuned model clf-tuned:1")

    version = (await client.get("/v1/models/clf-tuned/versions/production")).json()
    lineage = version["lineage"]
    assert lineage["parent"]["model"] == "clf" and lineage["parent"]["version"] == 1
    assert len(lineage["training_file"]["sha256"]) == 64 and lineage["seed"] == 7
    assert lineage["hyperparameters"]["epochs"] == 4 and lineage["trainer_host"]
    assert version["signature"] == {**MLP_SIGNATURE, "inputs": MLP_SIGNATURE["inputs"]}

    x, y = rows(120, 2)
    r = await client.post(
        "/v2/models/clf-tuned/infer", json=infer_body("x", x.reshape(-1).tolist(), [120, 4])
    )
    assert r.status_code == 200, r.text
    logits = np.array(r.json()["outputs"][0]["data"]).reshape(120, 3)
    assert float((logits.argmax(1) == y).mean()) == pytest.approx(result["metrics"]["accuracy"], abs=1e-6)

    # per example: label, the result's and the parent's prediction on every validation row
    (results,) = job["result_files"]
    assert (await client.get(f"/v1/files/{results}")).json()["purpose"] == "fine-tune-results"
    content = (await client.get(f"/v1/files/{results}/content")).text.splitlines()
    assert content[0] == "line,label,predicted,parent_predicted,probabilities" and len(content) == 121
    table = [line.split(",") for line in content[1:]]
    assert [int(r[0]) for r in table] == list(range(1, 121))
    right = sum(r[1] == r[2] for r in table) / 120
    assert right == pytest.approx(result["metrics"]["accuracy"], abs=1e-6)
    assert sum(r[1] == r[3] for r in table) / 120 == pytest.approx(
        result["parent_metrics"]["accuracy"], abs=1e-6
    )

    # the events also come as server-sent events (the job is finished: the stream ends)
    async with client.stream("GET", f"/v1/fine_tuning/jobs/{job['id']}/events?stream=true") as s:
        text = "".join([chunk async for chunk in s.aiter_text()])
    assert "event: metrics" in text and "event: done" in text


async def test_same_seed_same_metrics(client, trainer) -> None:
    train, valid = await setup_classifier(client)
    runs = []
    for suffix in ("a", "b"):
        r = await client.post(
            "/v1/fine_tuning/jobs",
            json=job_body(
                train,
                valid,
                suffix=suffix,
                hyperparameters={"dropout": 0.1, "lr_scheduler": "cosine", "warmup_steps": 5},
            ),
        )
        job = await wait_for(client, r.json()["id"])
        assert job["status"] == "succeeded", job
        runs.append((await client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics")).json())
    strip = [[{k: v for k, v in row.items() if k != "seconds"} for row in m["valid"]] for m in runs]
    assert strip[0] == strip[1]
    assert runs[0]["train"] == runs[1]["train"]


async def test_bad_inputs_are_refused_before_queueing(client, settings) -> None:
    r = await upload(client, b'{"input": [1, 2, 3, 4], "label": 0}\n{"input": [1, 2], "label": 1}\nnope\n')
    assert r.status_code == 422
    body = r.json()["error"]  # OpenAI's shape; the report rides inside it
    assert body["code"] == "invalid_dataset" and "line 2" in body["message"] and body["param"] == "file"
    assert [(e["line"], e["field"]) for e in body["report"]["errors"]] == [(2, "input"), (3, "")]
    empty = (await upload(client, b"")).json()["error"]
    assert empty["report"]["errors"][0]["message"] == "file is empty (no rows)"
    r = await client.post("/v1/files", data={"purpose": "other"}, files={"file": ("a.jsonl", b"{}")})
    assert r.status_code == 422 and r.json()["error"]["param"] == "purpose", r.text

    train, valid = await setup_classifier(client)
    x, y = rows(30, 3)
    y[4] = 5
    bad = (await upload(client, jsonl(x, y), "bad.jsonl")).json()["id"]
    r = await client.post("/v1/fine_tuning/jobs", json=job_body(bad, valid))
    err = r.json()["error"]
    assert r.status_code == 422 and "line 5" in err["message"] and "unknown label 5" in err["message"]
    assert err["report"]["training_file"]["errors"][0]["line"] == 5 and err["param"] == "training_file"

    assert (await register(client, "onnxy", demo_onnx_bytes(), "onnx")).status_code == 201
    r = await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid, model="onnxy"))
    assert r.status_code == 422 and "ONNX" in r.json()["error"]["message"]

    r = await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid, hyperparameters={"lr": 1}))
    assert r.status_code == 422
    r = await client.post("/v1/fine_tuning/jobs", json={**job_body(train, valid), "command": "rm -rf /"})
    assert r.status_code == 422
    assert (await client.get("/v1/fine_tuning/jobs")).json()["data"] == []

    # another tenant sees none of it
    other = {"Authorization": f"Bearer {make_key(settings, ['finetune'], tenant='other')}"}
    assert (await client.get(f"/v1/files/{train}", headers=other)).status_code == 404
    assert (await client.delete(f"/v1/files/{train}", headers=other)).status_code == 404
    r = await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid), headers=other)
    assert r.status_code == 404
    infer_only = {"Authorization": f"Bearer {make_key(settings, ['infer'])}"}
    assert (await client.get("/v1/files", headers=infer_only)).status_code == 403


async def test_dry_run_and_idempotency(client, settings) -> None:
    train, valid = await setup_classifier(client)
    r = await client.post(
        "/v1/fine_tuning/jobs?dry_run=true",
        json=job_body(train, valid, hyperparameters={"freeze": ["backbone"]}),
    )
    assert r.status_code == 200, r.text
    est = r.json()["estimate"]
    assert est["steps_per_epoch"] == 10 and est["total_steps"] == 40
    assert est["trainable_parameters"] == 16 * 3 + 3 < est["total_parameters"]
    assert (await client.get("/v1/fine_tuning/jobs")).json()["data"] == []

    body = job_body(train, valid)
    first = await client.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "k1"})
    again = await client.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 200 and first.json()["id"] == again.json()["id"]
    other = await client.post(
        "/v1/fine_tuning/jobs", json={**body, "seed": 8}, headers={"Idempotency-Key": "k1"}
    )
    assert other.status_code == 422
    jobs = (await client.get("/v1/fine_tuning/jobs")).json()
    assert len(jobs["data"]) == 1

    await client.post("/v1/fine_tuning/jobs", json=body)
    await client.post("/v1/fine_tuning/jobs", json=body)
    page = (await client.get("/v1/fine_tuning/jobs?limit=2")).json()
    assert len(page["data"]) == 2 and page["has_more"]
    rest = (await client.get(f"/v1/fine_tuning/jobs?limit=2&after={page['data'][-1]['id']}")).json()
    assert len(rest["data"]) == 1 and not rest["has_more"]
    assert rest["data"][0]["id"] == first.json()["id"]


async def test_cancel_pause_resume(client, settings, trainer) -> None:
    train, valid = await setup_classifier(client)
    slow = {"epochs": 200, "batch_size": 4}
    r = await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid, hyperparameters=slow))
    job_id = r.json()["id"]
    await wait_for(client, job_id, ("running",), pred=lambda j: (j["progress"] or {}).get("epoch", 0) >= 2)
    r = await client.post(f"/v1/fine_tuning/jobs/{job_id}/pause")
    assert r.status_code == 200 and r.json()["status"] == "paused"
    # the trainer lets go within seconds: it is free to take the next job
    await wait_for(client, job_id, ("paused",), pred=lambda _j: trainer.trainer.current_job is None)
    epochs_before = len((await client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")).json()["data"])
    assert epochs_before >= 1
    r = await client.post(f"/v1/fine_tuning/jobs/{job_id}/resume")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    await wait_for(
        client,
        job_id,
        ("running",),
        pred=lambda j: (j["progress"] or {}).get("epoch", 0) >= epochs_before + 2,
    )
    r = await client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    await wait_for(client, job_id, ("cancelled",), pred=lambda _j: trainer.trainer.current_job is None)
    assert (await client.post(f"/v1/fine_tuning/jobs/{job_id}/resume")).status_code == 409

    events = (await client.get(f"/v1/fine_tuning/jobs/{job_id}/events")).json()["data"]
    assert any(e["message"].startswith("resumed from the checkpoint of epoch") for e in events)
    metrics = (await client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics")).json()
    epochs = [v["epoch"] for v in metrics["valid"]]
    assert epochs == list(range(1, len(epochs) + 1))  # none lost, none twice
    steps = [t["step"] for t in metrics["train"]]
    assert steps == list(range(1, len(steps) + 1))


async def test_job_missing_from_the_stream_is_enqueued_again(client, settings, redis_client) -> None:
    """Redis lost the dispatch (restart): the trainer finds the queued job in the database."""
    train, valid = await setup_classifier(client)
    r = await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid, hyperparameters={"epochs": 1}))
    job_id = r.json()["id"]
    redis_client.delete(f"{settings.redis_prefix}:ft:jobs")
    t = TrainerThread(settings).start()
    try:
        job = await wait_for(client, job_id)
    finally:
        t.stop()
    assert job["status"] == "succeeded"


async def test_crash_marks_the_job_failed_with_a_readable_error(client, settings, trainer) -> None:
    class Boom(__import__("torch").nn.Module):
        def forward(self, x):
            if bool((x.abs() > 1000).any()):
                raise RuntimeError("values out of range")
            return x[:, :3] * self.w

        def __init__(self) -> None:
            super().__init__()
            self.w = __import__("torch").nn.Parameter(__import__("torch").ones(3))

    from tests.models import torchscript_bytes

    assert (
        await register(client, "boom", torchscript_bytes(Boom()), "torchscript", signature=MLP_SIGNATURE)
    ).status_code == 201
    x, y = rows(40, 5)
    x[7, 0] = 5000.0
    f = (await upload(client, jsonl(x, y))).json()["id"]
    body = {
        "model": "boom",
        "training_file": f,
        "validation_split": 0.25,
        "seed": 1,
        "hyperparameters": {"epochs": 1, "batch_size": 40},
    }
    r = await client.post("/v1/fine_tuning/jobs", json=body)
    job = await wait_for(client, r.json()["id"])
    assert job["status"] == "failed"
    assert "values out of range" in job["error"]["message"] and "Traceback" not in job["error"]["message"]
    assert mlp_bytes()  # the helper stays importable


async def test_idempotency_key_in_flight_is_409(client, settings, registry) -> None:
    train, valid = await setup_classifier(client)
    body = job_body(train, valid)
    import hashlib

    from model_store.jobs import JobStore
    from service.finetune.schemas import JobCreate

    digest = hashlib.sha256(JobCreate.model_validate(body).model_dump_json().encode()).hexdigest()
    tenant = registry.ensure_tenant(settings.default_tenant)
    assert JobStore(registry.sessions).reserve_key(tenant, "k2", digest) is None  # a first request, mid-way
    r = await client.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "k2"})
    assert r.status_code == 409
    assert (await client.get("/v1/fine_tuning/jobs")).json()["data"] == []


async def test_new_head_with_more_classes(client, settings, trainer, worker: WorkerThread) -> None:
    await setup_classifier(client)
    x, y = rows(200, 9)
    y = np.where(x[:, 3] > 1.0, 4, y)  # a fourth and fifth class the parent never had
    y = np.where(x[:, 3] < -1.0, 3, y)
    wide = (await upload(client, jsonl(x, y), "wide.jsonl")).json()["id"]
    body = {"model": "clf", "training_file": wide, "validation_split": 0.2, "seed": 1, "suffix": "wide"}
    r = await client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 422 and "unknown label" in r.json()["error"]["message"]
    body["hyperparameters"] = {"num_classes": 5, "epochs": 3, "learning_rate": 0.02}
    r = await client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    job = await wait_for(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    version = (await client.get("/v1/models/clf-wide/versions/1")).json()
    assert version["signature"]["outputs"][0]["shape"] == [-1, 5]
    r = await client.post(
        "/v2/models/clf-wide/infer", json=infer_body("x", x[:2].reshape(-1).tolist(), [2, 4])
    )
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 5]
    r = await client.post("/v1/fine_tuning/jobs", json={**body, "hyperparameters": {"num_classes": 2}})
    assert r.status_code == 422


async def test_another_tenant_cannot_see_or_touch_a_job(client, settings) -> None:
    train, valid = await setup_classifier(client)
    job_id = (await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid))).json()["id"]
    other = {"Authorization": f"Bearer {make_key(settings, ['finetune'], tenant='other')}"}
    for method, path in [
        ("GET", ""),
        ("POST", "/cancel"),
        ("POST", "/pause"),
        ("GET", "/events"),
        ("GET", "/checkpoints"),
        ("GET", "/metrics"),
        ("GET", "/events?stream=true"),
    ]:
        r = await client.request(method, f"/v1/fine_tuning/jobs/{job_id}{path}", headers=other)
        assert r.status_code == 404, (path, r.text)
    assert (await client.get("/v1/fine_tuning/jobs", headers=other)).json()["data"] == []
    assert (await client.get(f"/v1/fine_tuning/jobs/{job_id}")).json()["status"] == "queued"


async def test_stopping_trainer_hands_the_job_back(client, settings) -> None:
    """SIGTERM path: the job goes back to the queue and another trainer resumes it."""
    train, valid = await setup_classifier(client)
    body = job_body(
        train,
        valid,
        promote="production",
        hyperparameters={"epochs": 6, "batch_size": 4, "learning_rate": 1e-9, "optimizer": "sgd"},
    )
    job_id = (await client.post("/v1/fine_tuning/jobs", json=body)).json()["id"]
    first = TrainerThread(settings).start()
    try:
        await wait_for(
            client, job_id, ("running",), pred=lambda j: (j["progress"] or {}).get("epoch", 0) >= 1
        )
    finally:
        first.stop()
    job = (await client.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
    assert job["status"] == "queued"
    second = TrainerThread(settings).start()
    try:
        job = await wait_for(client, job_id)
    finally:
        second.stop()
    assert job["status"] == "succeeded"
    events = [
        e["message"] for e in (await client.get(f"/v1/fine_tuning/jobs/{job_id}/events")).json()["data"]
    ]
    assert "trainer stopping; the job is queued again" in events
    metrics = (await client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics")).json()
    assert [v["epoch"] for v in metrics["valid"]] == [1, 2, 3, 4, 5, 6]
    # a learning rate this small changes nothing: no better than the parent, so no promotion
    assert job["result"]["promoted"] is False
    assert "production" not in (await client.get("/v1/models/clf-tuned")).json()["aliases"]


async def test_regression_from_a_csv_file(client, trainer) -> None:
    class Reg(__import__("torch").nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = __import__("torch").nn.Linear(4, 1)

        def forward(self, x):
            return self.lin(x)

    from tests.ft_data import csv_bytes
    from tests.models import torchscript_bytes

    sig = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
    }
    assert (
        await register(client, "reg", torchscript_bytes(Reg()), "torchscript", signature=sig)
    ).status_code == 201
    x, _ = rows(200, 4)
    target = x @ np.array([1.0, -1.0, 0.5, 2.0]) + 0.25
    f = await upload(client, csv_bytes(x, target), "reg.csv")
    assert f.status_code == 201 and f.json()["format"] == "csv", f.text
    body = {
        "model": "reg",
        "training_file": f.json()["id"],
        "task": "regression",
        "seed": 2,
        "hyperparameters": {"epochs": 10, "learning_rate": 0.05, "lr_scheduler": "linear"},
    }
    job = await wait_for(client, (await client.post("/v1/fine_tuning/jobs", json=body)).json()["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["metrics"]["r2"] > 0.9 > job["result"]["parent_metrics"]["r2"]
