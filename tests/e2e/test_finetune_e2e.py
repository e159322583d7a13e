"""Acceptance on the real stack: gateway, inference worker and trainers as real `kiln` processes
against the real PostgreSQL and Redis. A tiny MLP classifier, a few hundred rows."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.cli.client import KilnClient
from tests.conftest import ADMIN_KEY
from tests.e2e.harness import ROOT, Stack, metric_sum
from tests.ft_data import MLP_SIGNATURE, jsonl, mlp_bytes, rows

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack_env(stack_env: dict[str, str]) -> dict[str, str]:
    """The shared stack settings plus short trainer leases, so a killed trainer is noticed fast."""
    return {
        **stack_env,
        "KILN_TRAINER_LEASE_S": "2",
        "KILN_TRAINER_RENEW_INTERVAL_S": "0.2",
        "KILN_TRAINER_RECONCILE_INTERVAL_S": "0.5",
        "KILN_TRAINER_CLAIM_IDLE_MS": "2000",
    }


def _poll(stack: Stack, fetch: Any, done: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        stack.check_alive()
        assert time.monotonic() < deadline, f"timed out: {value}"
        time.sleep(0.05)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie runs nothing


def test_finetune_survives_kill9_and_serves_the_result(stack: Stack, tmp_path: Path) -> None:
    stack.start_gateway()
    stack.start_worker("worker")
    trainer_a = stack.start_trainer("trainer-a")
    kiln = KilnClient(stack.url, ADMIN_KEY)

    model_path = tmp_path / "clf.pt"
    model_path.write_bytes(mlp_bytes())
    assert kiln.push_model("clf", model_path, "torchscript", signature=MLP_SIGNATURE)["version"] == 1
    (tmp_path / "train.jsonl").write_bytes(jsonl(*rows(320, 1)))
    (tmp_path / "valid.jsonl").write_bytes(jsonl(*rows(120, 2)))
    train = kiln.upload_file(tmp_path / "train.jsonl")
    valid = kiln.upload_file(tmp_path / "valid.jsonl")
    assert train["stats"]["rows"] == 320

    epochs = 8
    job = kiln.create_job(
        model="clf",
        training_file=train["id"],
        validation_file=valid["id"],
        seed=11,
        suffix="tuned",
        hyperparameters={"epochs": epochs, "batch_size": 4, "learning_rate": 0.005, "optimizer": "adam"},
        keep_checkpoints=epochs,  # all of them, to show none was lost or recorded twice
    )
    job_id = job["id"]
    _poll(stack, lambda: kiln.checkpoints(job_id)["data"], lambda c: len(c) >= 2)
    fenced = _descendants(trainer_a.popen.pid)  # the fork server and the fenced training process
    assert len(fenced) >= 2, fenced
    os.kill(trainer_a.popen.pid, signal.SIGKILL)  # the trainer alone, mid-job, most likely mid-epoch
    trainer_a.popen.wait(10)
    stack.procs.remove(trainer_a)
    try:  # no orphan keeps training: its fenced processes die with it
        _poll(stack, lambda: [p for p in fenced if _running(p)], lambda left: not left, 15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(trainer_a.popen.pid, signal.SIGKILL)
    trainer_a.terminate()  # already dead: closes its log
    killed_at = len(kiln.checkpoints(job_id)["data"])
    assert killed_at < epochs and kiln.get_job(job_id)["status"] == "running"

    stack.start_trainer("trainer-b")
    job = _poll(stack, lambda: kiln.get_job(job_id), lambda j: j["status"] in ("succeeded", "failed"))
    assert job["status"] == "succeeded", job

    metrics = kiln.metrics(job_id)
    assert [v["epoch"] for v in metrics["valid"]] == list(range(1, epochs + 1))  # none lost, none twice
    assert [t["step"] for t in metrics["train"]] == list(range(1, epochs * 80 + 1))
    assert [c["epoch"] for c in kiln.checkpoints(job_id)["data"]] == list(range(1, epochs + 1))
    messages = [e["message"] for e in kiln.events(job_id)["data"]]
    assert any(m.startswith("trainer stopped answering") for m in messages)
    resumed = [m for m in messages if m.startswith("resumed from the checkpoint of epoch")]
    assert len(resumed) == 1 and int(resumed[0].rsplit(" ", 1)[1]) >= killed_at

    result = job["result"]
    assert result["metrics"]["accuracy"] > result["parent_metrics"]["accuracy"]
    version = kiln.get_version("clf-tuned", 1)
    assert version["lineage"]["trainer_pid"] != trainer_a.popen.pid
    assert version["lineage"]["parent"] == {
        "model": "clf",
        "version": 1,
        "sha256": version["lineage"]["parent"]["sha256"],
    }

    # the surviving trainer's metrics show the steps it took
    text = httpx.get(f"http://127.0.0.1:{stack.worker_ports['trainer-b']}/metrics").text
    assert metric_sum(text, "kiln_trainer_steps_total") > 0
    assert metric_sum(text, "kiln_trainer_epoch_duration_seconds_count") >= 1

    # the new version answers /v2/.../infer through the real worker, with the accuracy recorded
    x, y = rows(120, 2)
    out = kiln.infer(
        "clf-tuned",
        [{"name": "x", "shape": [120, 4], "datatype": "FP32", "data": x.reshape(-1).tolist()}],
        version="1",
    )
    logits = np.array(out["outputs"][0]["data"]).reshape(120, 3)
    assert float((logits.argmax(1) == y).mean()) == pytest.approx(result["metrics"]["accuracy"], abs=1e-6)

    # the command line: create --watch (uploads the path first), then plot
    env = {**stack.env, "KILN_URL": stack.url, "KILN_API_KEY": ADMIN_KEY}
    cli = [sys.executable, "-m", "service.cli.main", "finetune"]
    watched = subprocess.run(
        [
            *cli,
            "create",
            "--model",
            "clf",
            "--training-file",
            str(tmp_path / "train.jsonl"),
            "--epochs",
            "2",
            "--suffix",
            "cli",
            "--seed",
            "3",
            "--watch",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert watched.returncode == 0, watched.stderr
    assert "100% step 16/16" in watched.stderr and '"status": "succeeded"' in watched.stdout
    png = tmp_path / "curve.png"
    plotted = subprocess.run(
        [*cli, "plot", job_id, "-o", str(png)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kiln.close()
