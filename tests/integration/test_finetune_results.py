"""What a finished fine-tune leaves, on real PostgreSQL and Redis with a real trainer: metrics that
equal scikit-learn's on the results file's own probabilities, the best and last checkpoints only,
the version's artifact as a streamed download, files deleted with their blob once unneeded, and
another tenant refused all of it (404)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from sklearn import metrics as sk
from sqlalchemy import select, update

from model_store.blobs import BlobStore
from model_store.db import ModelRow, ModelVersionRow
from service.settings import Settings
from tests.conftest import make_key
from tests.ft_data import MLP_SIGNATURE, jsonl, mlp_bytes, rows
from tests.integration.ft_helpers import TrainerThread, job_body, setup_classifier, upload, wait_for
from tests.integration.helpers import register


@pytest.fixture
def trainer(settings: Settings) -> Iterator[TrainerThread]:
    t = TrainerThread(settings).start()
    yield t
    t.stop()


def _results(text: str) -> tuple[np.ndarray, np.ndarray]:
    table = list(csv.DictReader(io.StringIO(text)))
    labels = np.array([int(float(r["label"])) for r in table])
    probs = np.array([json.loads(r["probabilities"]) for r in table])
    assert [int(r["predicted"]) for r in table] == probs.argmax(axis=1).tolist()
    return labels, probs


async def test_metrics_checkpoints_download_and_deletes(client, settings, trainer) -> None:
    train, valid = await setup_classifier(client)
    body = job_body(train, valid, promote_metric="f1", hyperparameters={"epochs": 5})
    r = await client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["promote_metric"] == "f1"
    job = await wait_for(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    m = job["result"]["metrics"]

    # every metric equals scikit-learn's on the probabilities the results file reports
    (results,) = job["result_files"]
    labels, probs = _results((await client.get(f"/v1/files/{results}/content")).text)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    pred = probs.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(labels, pred))
    for name, fn in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        assert m[name] == pytest.approx(fn(labels, pred, average="macro", zero_division=0)), name
    assert m["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, probs, multi_class="ovr"), abs=1e-5)
    assert m["log_loss"] == pytest.approx(sk.log_loss(labels, probs), abs=1e-5)

    # when the job ended: only the best epoch's (by f1) and the last checkpoint stay, blobs too
    valid_rows = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics")).json()["valid"]
    best = max(valid_rows, key=lambda v: (v["f1"], -v["epoch"]))["epoch"]
    ckpts = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")).json()["data"]
    assert [c["epoch"] for c in ckpts] == sorted({best, 5})
    blobs = BlobStore(settings.blob_dir)
    assert all(blobs.path_for(c["sha256"]).exists() for c in ckpts)
    events = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/events")).json()["data"]
    assert any(e["message"].startswith("deleted the checkpoints of epochs") for e in events)
    per_epoch = [e["data"] for e in events if e["type"] == "metrics"]
    assert [d["epoch"] for d in per_epoch] == [1, 2, 3, 4, 5]
    assert all(
        {"accuracy", "f1", "roc_auc", "log_loss", "valid_loss", "best_epoch"} <= set(d) for d in per_epoch
    )

    # the version's artifact, streamed, with its digest as the ETag
    version = (await client.get("/v1/models/clf-tuned/versions/1")).json()
    r = await client.get("/v1/models/clf-tuned/versions/1/content")
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == version["sha256"]
    assert r.headers["etag"] == f'"{version["sha256"]}"'
    assert r.headers["content-disposition"] == 'attachment; filename="clf-tuned-v1.pt"'
    assert r.headers["content-type"] == "application/octet-stream"

    # another tenant: 404 for the download and the deletes, nothing changes
    other = {"Authorization": f"Bearer {make_key(settings, ['manage', 'finetune'], tenant='other')}"}
    assert (await client.get("/v1/models/clf-tuned/versions/1/content", headers=other)).status_code == 404
    for file_id in (train, results):
        assert (await client.delete(f"/v1/files/{file_id}", headers=other)).status_code == 404
        assert (await client.get(f"/v1/files/{file_id}")).status_code == 200

    # a file the version's lineage names stays (409 says why); a results file goes with its blob
    r = await client.delete(f"/v1/files/{train}")
    assert r.status_code == 409 and "lineage of clf-tuned:1" in r.text, r.text
    sha = (await client.get(f"/v1/files/{results}")).json()["sha256"]
    assert (await client.delete(f"/v1/files/{results}")).status_code == 200
    assert not blobs.path_for(sha).exists()
    assert (await client.get(f"/v1/files/{results}")).status_code == 404


async def test_a_blob_shared_by_two_files_goes_with_the_last(client, settings) -> None:
    data = jsonl(*rows(40, 5))
    first, second = [(await upload(client, data)).json() for _ in range(2)]
    assert first["sha256"] == second["sha256"]
    blobs = BlobStore(settings.blob_dir)
    assert (await client.delete(f"/v1/files/{first['id']}")).status_code == 200
    assert blobs.path_for(first["sha256"]).exists()
    r = await client.get(f"/v1/files/{second['id']}/content")
    assert r.status_code == 200 and r.content == data and r.headers["etag"] == f'"{second["sha256"]}"'
    assert (await client.delete(f"/v1/files/{second['id']}")).status_code == 200
    assert not blobs.path_for(first["sha256"]).exists()


async def test_an_active_jobs_file_is_not_deleted(client: httpx.AsyncClient) -> None:
    train, valid = await setup_classifier(client)
    job = (await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid))).json()  # no trainer
    r = await client.delete(f"/v1/files/{valid}")
    assert r.status_code == 409 and job["id"] in r.text
    assert (await client.get(f"/v1/files/{valid}")).status_code == 200


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"promote_metric": "r2"}, "not a classification metric"),
        ({"promote_metric": "accuracy", "task": "regression"}, "not a regression metric"),
        ({"keep_checkpoints": -1}, "keep_checkpoints"),
    ],
)
async def test_bad_metric_choices_are_refused(client, extra, needle) -> None:
    train, valid = await setup_classifier(client)
    r = await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid, **extra))
    assert r.status_code == 422 and needle in r.text, r.text


async def test_a_checkpoint_becomes_a_version(client, settings, trainer) -> None:
    import torch

    train, valid = await setup_classifier(client)
    body = job_body(train, valid, keep_checkpoints=3, hyperparameters={"epochs": 3})
    job = await wait_for(client, (await client.post("/v1/fine_tuning/jobs", json=body)).json()["id"])
    assert job["status"] == "succeeded", job
    ckpts = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")).json()["data"]
    first = ckpts[0]
    assert first["epoch"] == 1 and len(ckpts) == 3
    url = f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/{first['id']}/promote"

    other = {"Authorization": f"Bearer {make_key(settings, ['manage', 'finetune'], tenant='other')}"}
    assert (await client.post(url, headers=other)).status_code == 404
    for bad in ("ftckpt-999999999", "ftckpt-x", "1; drop"):
        r = await client.post(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/{bad}/promote")
        assert r.status_code == 404, r.text

    r = await client.post(url)
    assert r.status_code == 201, r.text
    version = r.json()
    assert version["version"] == 2 and version["lineage"]["checkpoint"]["epoch"] == 1
    assert version["lineage"]["job_id"] == job["id"]
    again = await client.post(url)  # the same checkpoint again: the version it made
    assert again.status_code == 201 and again.json()["version"] == 2

    # the exported weights are epoch 1's: the accuracy its checkpoint recorded
    data = (await client.get("/v1/models/clf-tuned/versions/2/content")).content
    module = torch.jit.load(io.BytesIO(data))
    x, y = rows(120, 2)
    with torch.no_grad():
        pred = module(torch.from_numpy(x)).argmax(dim=1).numpy()
    assert float((pred == y).mean()) == pytest.approx(first["metrics"]["accuracy"], abs=1e-6)


async def test_early_stopping_restores_the_best_epoch_through_the_trainer(client, settings, trainer) -> None:
    """Validation loss falls until epoch 2 and rises after (tests/unit/test_early_stopping.py has
    the arithmetic): the job stops after epoch 4, its result is epoch 2's model."""
    import torch

    from tests.integration.helpers import register
    from tests.models import torchscript_bytes
    from tests.unit.test_early_stopping import SIG, Slope

    sig = SIG.model_dump(mode="json")
    assert (
        await register(client, "slope", torchscript_bytes(Slope()), "torchscript", signature=sig)
    ).status_code == 201

    def data(k: float) -> bytes:
        return "".join(f'{{"input": [{x}], "label": {k * x}}}\n' for x in [1.0, -1.0] * 4).encode()

    train = (await upload(client, data(3.0))).json()["id"]
    valid = (await upload(client, data(1.0), "valid.jsonl")).json()["id"]
    hp = {
        "epochs": 20,
        "batch_size": 8,
        "optimizer": "sgd",
        "learning_rate": 0.1,
        "early_stopping": {"patience": 2},
    }
    body = {"model": "slope", "training_file": train, "validation_file": valid, "task": "regression"}
    r = await client.post("/v1/fine_tuning/jobs", json={**body, "hyperparameters": hp, "seed": 1})
    assert r.status_code == 200, r.text
    job = await wait_for(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["stopped_early"] and result["epochs_completed"] == 4 and result["best_epoch"] == 2
    valid_rows = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics")).json()["valid"]
    losses = [v["valid_loss"] for v in valid_rows]
    assert losses[1] < losses[0] and losses[1] < losses[2] < losses[3]
    assert result["metrics"]["valid_loss"] == pytest.approx(losses[1])
    assert result["metrics"]["r2"] == pytest.approx(valid_rows[1]["r2"])
    ckpts = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")).json()["data"]
    assert [c["epoch"] for c in ckpts] == [2, 4]  # the best and the last

    served = (await client.get("/v1/models/slope-ft/versions/1/content")).content
    module = torch.jit.load(io.BytesIO(served))
    assert float(module.lin.weight.detach().reshape(())) == pytest.approx(1.08, abs=1e-5)


async def test_a_cancelled_job_keeps_its_best_and_last_checkpoints(client, settings, trainer) -> None:
    train, valid = await setup_classifier(client)
    body = job_body(train, valid, hyperparameters={"epochs": 200, "batch_size": 4})
    job_id = (await client.post("/v1/fine_tuning/jobs", json=body)).json()["id"]
    await wait_for(client, job_id, ("running",), pred=lambda j: (j["progress"] or {}).get("epoch", 0) >= 3)
    assert (await client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")).status_code == 200
    await wait_for(client, job_id, ("cancelled",), pred=lambda _j: trainer.trainer.current_job is None)
    await client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")  # 409 now; nothing changes
    ckpts = (await client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")).json()["data"]
    valid_rows = (await client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics")).json()["valid"]
    recorded = [v["epoch"] for v in valid_rows]
    best = int(valid_rows[-1]["best_epoch"])
    assert len(recorded) >= 2 and [c["epoch"] for c in ckpts] == sorted({best, recorded[-1]})


async def test_a_compression_lineage_in_either_shape_guards_its_files(client: httpx.AsyncClient) -> None:
    """Prune-with-fine-tune and distil versions named their training file by its bare id (databases
    still hold that shape), fine-tunes by `{"id", "sha256"}`: deleting files reads both, refuses
    (409, saying which version) a file a lineage names and deletes any other."""
    train, valid = await setup_classifier(client)
    unrelated = (await upload(client, jsonl(*rows(40, 9)), "other.jsonl")).json()["id"]
    for name in ("clf-prune", "clf-quantize"):
        r = await register(client, name, mlp_bytes(), "torchscript", signature=MLP_SIGNATURE)
        assert r.status_code == 201, r.text
    parent = {"model": "clf", "version": 1, "sha256": "0" * 64, "format": "torchscript"}
    as_written = {"kind": "compression", "method": "prune", "parent": parent, "validation_file": valid}
    lineages = {
        "clf-prune": {**as_written, "job_id": "ftjob-a", "training_file": train},
        "clf-quantize": {**as_written, "job_id": "ftjob-b", "method": "quantize", "training_file": None},
    }
    with client.app.state.kiln.sessions() as s:  # type: ignore[attr-defined]
        for name, lineage in lineages.items():
            model_id = select(ModelRow.id).where(ModelRow.name == name).scalar_subquery()
            s.execute(
                update(ModelVersionRow).where(ModelVersionRow.model_id == model_id).values(lineage=lineage)
            )
        s.commit()

    assert (await client.delete(f"/v1/files/{unrelated}")).status_code == 200
    assert (await client.get(f"/v1/files/{unrelated}")).status_code == 404
    for file_id in (train, valid):
        r = await client.delete(f"/v1/files/{file_id}")
        assert r.status_code == 409 and "lineage of clf-prune:1" in r.text, r.text
        assert (await client.get(f"/v1/files/{file_id}")).status_code == 200
