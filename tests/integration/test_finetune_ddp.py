"""Distributed fine-tunes (`resources: {"processes": N}`): DDP ranks in fenced children, started and
supervised by a real trainer (in a thread) against the real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_store import netns
from model_store.fence import fence_available
from service.settings import Settings
from tests.ft_data import jsonl, rows
from tests.integration.ft_helpers import TrainerThread, job_body, setup_classifier, upload, wait_for
from workers.contract.finetune_check import FenceLimits
from workers.finetune import fence as ft_fence

pytestmark = pytest.mark.skipif(
    not fence_available() or not netns.available(),
    reason="distributed jobs need Landlock and unprivileged user namespaces",
)


@pytest.fixture
def trainer(settings: Settings) -> Iterator[TrainerThread]:
    limits = replace(FenceLimits.from_settings(settings), threads=1)  # one torch thread per rank
    t = TrainerThread(settings, limits=limits).start()
    yield t
    t.stop()


async def _get(client: httpx.AsyncClient, job_id: str, what: str) -> Any:
    r = await client.get(f"/v1/fine_tuning/jobs/{job_id}/{what}")
    assert r.status_code == 200, r.text
    return r.json()


async def test_two_processes_reach_the_accuracy_of_one(
    client: httpx.AsyncClient, trainer: TrainerThread
) -> None:
    await setup_classifier(client)  # the model; the data here are larger: 600 validation rows
    train = (await upload(client, jsonl(*rows(640, 1)))).json()["id"]
    valid = (await upload(client, jsonl(*rows(600, 2)), "valid.jsonl")).json()["id"]
    hp = {"epochs": 6}
    one = await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid, hyperparameters=hp))
    body = job_body(
        train, valid, hyperparameters=hp, suffix="ddp", resources={"processes": 2}, keep_checkpoints=100
    )
    two = await client.post("/v1/fine_tuning/jobs", json=body)
    assert one.status_code == two.status_code == 200, (one.text, two.text)
    assert two.json()["resources"] == {"processes": 2}
    single = await wait_for(client, one.json()["id"], timeout=300)
    ddp = await wait_for(client, two.json()["id"], timeout=300)
    assert single["status"] == ddp["status"] == "succeeded", (single, ddp)
    acc1, acc2 = single["result"]["metrics"]["accuracy"], ddp["result"]["metrics"]["accuracy"]
    assert acc2 > ddp["result"]["parent_metrics"]["accuracy"]
    assert abs(acc1 - acc2) <= 0.02, (acc1, acc2)

    job_id = ddp["id"]
    events = (await _get(client, job_id, "events"))["data"]
    assert any("with 2 processes (DDP)" in e["message"] for e in events), events
    # rank 0 alone reports: one row per step (640 rows: 320 per rank in batches of 16) and one
    # checkpoint per epoch
    metrics = await _get(client, job_id, "metrics")
    assert [t["step"] for t in metrics["train"]] == list(range(1, 6 * 20 + 1))
    ckpts = (await _get(client, job_id, "checkpoints"))["data"]
    assert [c["epoch"] for c in ckpts] == list(range(1, 7))
    assert (await client.get("/v1/models/clf-ddp")).json()["versions"] == [1]  # registered once
    lineage = (await client.get("/v1/models/clf-ddp/versions/1")).json()["lineage"]
    assert lineage["resources"] == {"processes": 2}


def _ranks_of_this_test() -> list[int]:
    """The DDP ranks the trainer started: fenced children of this process's fork server that live
    in another network namespace (the group's; the namespace holder is our own child)."""
    mine = os.readlink("/proc/self/ns/net")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            ns = os.readlink(entry / "ns" / "net")
            grand = int((Path("/proc") / str(ppid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ns != mine and ppid != os.getpid() and grand == os.getpid():
            found.append(int(entry.name))
    return sorted(found)


async def _kill_a_rank_after_the_first_checkpoint(client: httpx.AsyncClient, job_id: str, rank: int) -> int:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        job = (await client.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
        assert job["status"] in ("queued", "running"), f"the job ended before a rank could be killed: {job}"
        ranks = _ranks_of_this_test()
        if len((await _get(client, job_id, "checkpoints"))["data"]) >= 1 and len(ranks) == 2:
            os.kill(ranks[rank], signal.SIGKILL)  # started in order: rank 0, then rank 1
            return ranks[rank]
        await asyncio.sleep(0.05)
    raise AssertionError("no checkpoint in time")


@pytest.mark.parametrize("rank", [1, 0])
async def test_a_rank_killed_with_sigkill_resumes_from_the_checkpoint(
    client: httpx.AsyncClient, trainer: TrainerThread, rank: int
) -> None:
    train, valid = await setup_classifier(client)
    hp = {"epochs": 12}
    body = job_body(train, valid, hyperparameters=hp, resources={"processes": 2}, keep_checkpoints=100)
    r = await client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    await _kill_a_rank_after_the_first_checkpoint(client, job_id, rank)
    job = await wait_for(client, job_id, timeout=300)
    assert job["status"] == "succeeded", job

    messages = [e["message"] for e in (await _get(client, job_id, "events"))["data"]]
    died = [m for m in messages if "of the distributed job died" in m]
    assert (
        died
        and died[0].startswith(f"rank {rank} ")
        and "SIGKILL" in died[0]
        and "restarts from its last checkpoint" in died[0]
    ), messages
    resumed = [m for m in messages if m.startswith("resumed from the checkpoint of epoch ")]
    assert resumed and int(resumed[0].rsplit(" ", 1)[1]) >= 1, messages  # resumed, not started over
    assert sum(m.startswith("training started") for m in messages) == 1
    ckpts = (await _get(client, job_id, "checkpoints"))["data"]
    assert [c["epoch"] for c in ckpts] == list(range(1, 13))  # no epoch lost or recorded twice
    steps = [t["step"] for t in (await _get(client, job_id, "metrics"))["train"]]
    assert steps == list(range(1, 12 * 10 + 1))
    assert (await client.get("/v1/models/clf-tuned")).json()["versions"] == [1]


@pytest.mark.parametrize(
    "resources",
    [
        {"processes": 0},
        {"processes": 1000},
        {"processes": "2"},
        {"processes": True},
        {"processes": 2.5},
        {"processes": -1},
        {"processes": 2, "gpus": 4},
        {"processes": 2, "command": "torchrun --nproc-per-node 8 evil.py"},
        "lots",
        [2],
    ],
)
async def test_hostile_resources_are_refused_and_nothing_is_queued(
    client: httpx.AsyncClient, resources: Any
) -> None:
    train, valid = await setup_classifier(client)
    r = await client.post("/v1/fine_tuning/jobs", json=job_body(train, valid, resources=resources))
    assert r.status_code == 422, r.text
    assert "Traceback" not in r.text
    assert (await client.get("/v1/fine_tuning/jobs")).json()["data"] == []


async def test_cancel_stops_every_rank(client: httpx.AsyncClient, trainer: TrainerThread) -> None:
    train, valid = await setup_classifier(client)
    body = job_body(train, valid, hyperparameters={"epochs": 200}, resources={"processes": 2})
    job_id = (await client.post("/v1/fine_tuning/jobs", json=body)).json()["id"]
    await wait_for(
        client, job_id, ("running",), timeout=240, pred=lambda j: (j["progress"] or {}).get("step")
    )
    assert len(_ranks_of_this_test()) == 2
    r = await client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    groups = Path(tempfile.gettempdir())
    deadline = time.monotonic() + 60
    while _ranks_of_this_test() or list(groups.glob("kiln-ddp-*")):  # the ranks and their directory
        assert time.monotonic() < deadline, "ranks or their directory still there after the cancel"
        await asyncio.sleep(0.05)
    assert (await client.get(f"/v1/fine_tuning/jobs/{job_id}")).json()["status"] == "cancelled"


async def test_a_rank_that_fails_by_itself_fails_the_job_without_restarts(
    client: httpx.AsyncClient, trainer: TrainerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a rank killed by a signal restarts the group; one that exits with an error code (or
    reports an error) fails the job, as a one-process job's training process would."""
    monkeypatch.setattr(ft_fence, "TRAIN_TARGET", "tests.fence_targets:train_rank1_exits")
    train, valid = await setup_classifier(client)
    body = job_body(train, valid, resources={"processes": 2})
    job = await wait_for(
        client, (await client.post("/v1/fine_tuning/jobs", json=body)).json()["id"], timeout=120
    )
    assert job["status"] == "failed", job
    assert job["error"] == {"code": "training_process_died", "message": "rank 1 exited with code 3"}
    messages = [e["message"] for e in (await _get(client, job["id"], "events"))["data"]]
    assert not any("restarts" in m for m in messages), messages
