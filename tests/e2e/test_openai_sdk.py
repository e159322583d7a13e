"""The official `openai` SDK, unmodified, against a real gateway and trainer on free ports with a
tenant's key: upload a dataset, create jobs in OpenAI's shape (`method`, `n_epochs`, "auto"),
list them (the SDK follows the cursor), follow one's events to the end, list its checkpoints,
cancel another, page and delete files."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import ConflictError, NotFoundError, OpenAI, UnprocessableEntityError

from service.cli.client import KilnClient
from tests.e2e.conftest import AUTH
from tests.e2e.harness import Stack
from tests.ft_data import MLP_SIGNATURE, jsonl, mlp_bytes, rows

pytestmark = pytest.mark.e2e


def _tenant_key(url: str, tenant: str) -> str:
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/v1/tenants", json={"name": tenant}, headers=AUTH).status_code == 201
        r = c.post("/v1/keys", json={"scopes": ["manage", "finetune"], "tenant": tenant}, headers=AUTH)
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


def _until(stack: Stack, fetch: Any, done: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not done(value := fetch()):
        stack.check_alive()
        assert time.monotonic() < deadline, f"timed out: {value}"
        time.sleep(0.1)
    return value


def test_openai_sdk_files_and_jobs(stack: Stack, tmp_path: Path) -> None:
    stack.start_gateway()
    stack.start_trainer("trainer")
    key = _tenant_key(stack.url, "acme")
    (tmp_path / "clf.pt").write_bytes(mlp_bytes())
    with KilnClient(stack.url, key) as kiln:
        kiln.push_model("clf", tmp_path / "clf.pt", "torchscript", signature=MLP_SIGNATURE)
    client = OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)

    train = client.files.create(file=("train.jsonl", jsonl(*rows(160, 1))), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", jsonl(*rows(60, 2))), purpose="fine-tune")
    assert train.object == "file" and train.purpose == "fine-tune" and train.bytes > 0
    assert client.files.retrieve(train.id).filename == "train.jsonl"
    assert {f.id for f in client.files.list(limit=1)} == {train.id, valid.id}  # two pages, followed

    hp = {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 20}
    job = client.fine_tuning.jobs.create(
        model="clf",
        training_file=train.id,
        validation_file=valid.id,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},  # type: ignore[typeddict-item]
        suffix="oai",
        seed=5,
    )
    assert job.object == "fine_tuning.job" and job.status == "queued" and job.seed == 5
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.learning_rate_multiplier == 20
    assert job.method is not None and job.method.type == "supervised"

    done = _until(stack, lambda: client.fine_tuning.jobs.retrieve(job.id), lambda j: j.status == "succeeded")
    assert done.fine_tuned_model == "clf-oai:1" and done.finished_at is not None
    assert done.trained_tokens is None and done.estimated_finish is None  # tabular rows; finished
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=2))  # followed page by page
    assert [e.message for e in events if e.type == "metrics"] == ["epoch 1 done", "epoch 2 done"]
    assert events[-1].message.startswith("fine-tuned model clf-oai:1")
    assert all(e.level in ("info", "warn", "error") for e in events)
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints and all("valid_loss" in c.metrics.model_dump() for c in checkpoints)

    slow = {"n_epochs": 300, "batch_size": 2}
    second = client.fine_tuning.jobs.create(
        model="clf",
        training_file=train.id,
        method={"type": "supervised", "supervised": {"hyperparameters": slow}},  # type: ignore[typeddict-item]
    )
    running = _until(
        stack,
        lambda: client.fine_tuning.jobs.retrieve(second.id),
        lambda j: j.status == "running" and j.estimated_finish is not None,
    )
    assert running.estimated_finish >= int(time.time()) - 1
    cancelled = client.fine_tuning.jobs.cancel(second.id)
    assert cancelled.status == "cancelled"
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [second.id, job.id]

    _refusals_and_deletes(stack, client, train.id, valid.id, job.id, done.result_files)

    # this platform's own client: a checkpoint made a version, a version downloaded
    with KilnClient(stack.url, key) as kiln:
        made = kiln.promote_checkpoint(job.id, checkpoints[0].id)
        assert made["model"] == "clf-oai" and made["version"] == 2
        buf = io.BytesIO()
        etag, digest = kiln.download_version("clf-oai", 2, buf)
        assert etag == digest == made["sha256"] == hashlib.sha256(buf.getvalue()).hexdigest()


def _refusals_and_deletes(
    stack: Stack, client: OpenAI, train: str, valid: str, job: str, result_files: list[str]
) -> None:
    # hostile: a method this platform does not run, a string where a number goes
    for bad in (
        {"type": "dpo", "dpo": {}},
        {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "3"}}},
    ):
        with pytest.raises(UnprocessableEntityError):
            client.fine_tuning.jobs.create(model="clf", training_file=train, method=bad)  # type: ignore[arg-type]

    # files: a dataset a version's lineage names stays; an unused one is deleted
    with pytest.raises(ConflictError) as conflict:
        client.files.delete(train)
    assert "lineage of clf-oai:1" in conflict.value.message  # OpenAI's error shape: the SDK shows it
    (results,) = result_files
    assert client.files.delete(results).deleted is True
    with pytest.raises(NotFoundError):
        client.files.retrieve(results)
    other = OpenAI(base_url=f"{stack.url}/v1", api_key=_tenant_key(stack.url, "other"), max_retries=0)
    with pytest.raises(NotFoundError):
        other.files.delete(valid)
    with pytest.raises(NotFoundError):
        other.fine_tuning.jobs.cancel(job)


def test_openai_sdk_shows_the_servers_message_on_refusals(stack: Stack, tmp_path: Path) -> None:
    """A real gateway process, no trainer: every refusal on files and fine-tuning reaches the SDK
    in OpenAI's error shape, so its exception says what the server said (not "Error code: 422")."""
    stack.start_gateway()
    key = _tenant_key(stack.url, "acme")
    (tmp_path / "clf.pt").write_bytes(mlp_bytes())
    with KilnClient(stack.url, key) as kiln:
        kiln.push_model("clf", tmp_path / "clf.pt", "torchscript", signature=MLP_SIGNATURE)
    client = OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)

    malformed = b'{"input": [1, 2, 3, 4], "label": 0}\n{"input": [1, 2, 3, 4], "label": 1\n'
    with pytest.raises(UnprocessableEntityError) as refused:
        client.files.create(file=("bad.jsonl", malformed), purpose="fine-tune")
    assert "dataset is invalid: line 2" in refused.value.message, refused.value.message
    assert refused.value.code == "invalid_dataset" and refused.value.param == "file"
    with pytest.raises(UnprocessableEntityError) as refused:
        client.files.create(file=("ok.jsonl", jsonl(*rows(8, 1))), purpose="assistants")
    assert "purpose must be 'fine-tune'" in refused.value.message and refused.value.param == "purpose"

    train = client.files.create(file=("train.jsonl", jsonl(*rows(64, 1))), purpose="fine-tune")
    with pytest.raises(NotFoundError) as missing:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=train.id)
    assert "'no-such-model'" in missing.value.message and "not found" in missing.value.message
    with pytest.raises(UnprocessableEntityError) as refused:
        client.fine_tuning.jobs.create(model="clf", training_file=train.id, hyperparameters={"n_epochs": 0})
    assert "n_epochs must be a positive integer" in refused.value.message, refused.value.message
    with pytest.raises(UnprocessableEntityError) as refused:
        client.fine_tuning.jobs.create(
            model="clf",
            training_file=train.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": "big"}}},  # type: ignore[typeddict-item]
        )
    assert "batch_size" in refused.value.message, refused.value.message
    assert client.fine_tuning.jobs.list().data == []  # nothing was queued
