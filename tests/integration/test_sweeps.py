"""Hyperparameter sweeps over HTTP with a real trainer (in a thread) on PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.settings import Settings
from tests.integration.ft_helpers import TrainerThread, setup_classifier
from tests.integration.sweep_helpers import sweep_body, wait_sweep


@pytest.fixture
def trainer(settings: Settings) -> Iterator[TrainerThread]:
    t = TrainerThread(settings).start()
    yield t
    t.stop()


async def test_grid_sweep_then_a_seeded_bayesian_sweep(client, trainer) -> None:
    """2x2 grid over learning rate and batch size: four child jobs, the best promoted. Then a
    seeded bayesian sweep of 6 trials on the same data finds a trial at least as good."""
    train, valid = await setup_classifier(client)
    body = sweep_body(train, valid, {"method": "grid", "parallel": 2}, promote="production")
    r = await client.post("/v1/fine_tuning/sweeps", json=body)
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["object"] == "fine_tuning.sweep" and created["status"] == "queued"
    assert created["search"]["max_trials"] == 4 and created["search"]["metric"] == "accuracy"
    assert created["search"]["direction"] == "maximize" and created["target_model"] == "clf-sweep"

    sweep = await wait_sweep(client, created["id"], pred=lambda s: s["promotion"] is not None)
    assert sweep["status"] == "succeeded", sweep
    trials = sweep["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    points = {(t["hyperparameters"]["batch_size"], t["hyperparameters"]["learning_rate"]) for t in trials}
    assert points == {(16, 0.002), (16, 0.03), (64, 0.002), (64, 0.03)}
    for t in trials:  # each trial is a fine-tune job of its own
        job = (await client.get(f"/v1/fine_tuning/jobs/{t['job_id']}")).json()
        assert job["status"] == "succeeded" and job["sweep_id"] == sweep["id"], job
        assert job["sweep_trial"] == t["number"] and job["hyperparameters"]["batch_size"] in (16, 64)
    best = sweep["best_trial"]
    assert best["value"] == max(t["value"] for t in trials)
    assert sweep["fine_tuned_model"] == best["fine_tuned_model"]
    promo = sweep["promotion"]
    assert promo["promoted"] is True and promo["trial"] == best["number"], promo
    served = (await client.get("/v1/models/clf-sweep")).json()["aliases"]["production"]
    assert f"clf-sweep:{served}" == best["fine_tuned_model"]

    space = {
        "learning_rate": {"type": "log_uniform", "low": 0.001, "high": 0.1},
        "batch_size": {"type": "choice", "values": [16, 64]},
    }
    body = sweep_body(
        train, valid, {"method": "bayesian", "max_trials": 6}, space=space, suffix="bayes", seed=11
    )
    r = await client.post("/v1/fine_tuning/sweeps", json=body)
    assert r.status_code == 200, r.text
    bayes = await wait_sweep(client, r.json()["id"])
    assert bayes["status"] == "succeeded" and len(bayes["trials"]) == 6, bayes
    assert bayes["best_trial"]["value"] >= best["value"], (bayes["best_trial"], best)
    assert len({t["hyperparameters"]["learning_rate"] for t in bayes["trials"]}) == 6
