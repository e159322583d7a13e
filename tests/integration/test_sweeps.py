"""Hyperparameter sweeps over HTTP with a real trainer (in a thread) on PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.settings import Settings
from tests.conftest import make_key
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


async def test_cancel_cancels_the_children(client, trainer) -> None:
    train, valid = await setup_classifier(client)
    slow = {"epochs": 200, "batch_size": 4}
    body = sweep_body(train, valid, {"method": "grid", "parallel": 2}, hyperparameters=slow)
    body["space"] = {"learning_rate": {"type": "choice", "values": [0.001, 0.002, 0.003]}}
    sweep_id = (await client.post("/v1/fine_tuning/sweeps", json=body)).json()["id"]
    sweep = await wait_sweep(
        client, sweep_id, ("running",), pred=lambda s: any(t["status"] == "running" for t in s["trials"])
    )
    assert len(sweep["trials"]) == 2  # parallel: two at once
    r = await client.post(f"/v1/fine_tuning/sweeps/{sweep_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert {t["status"] for t in r.json()["trials"]} == {"cancelled"}
    # the trainer lets go of the running trial; the sweep makes no new trials
    await wait_sweep(client, sweep_id, ("cancelled",), pred=lambda _s: trainer.trainer.current_job is None)
    trainer.trainer.sweeps.advance(sweep_id)
    sweep = (await client.get(f"/v1/fine_tuning/sweeps/{sweep_id}")).json()
    assert len(sweep["trials"]) == 2 and sweep["status"] == "cancelled"
    for t in sweep["trials"]:
        assert (await client.get(f"/v1/fine_tuning/jobs/{t['job_id']}")).json()["status"] == "cancelled"
    assert (await client.post(f"/v1/fine_tuning/sweeps/{sweep_id}/cancel")).status_code == 409


async def test_another_tenant_cannot_see_cancel_or_promote_a_sweep(client, settings) -> None:
    train, valid = await setup_classifier(client)
    r = await client.post("/v1/fine_tuning/sweeps", json=sweep_body(train, valid, {"method": "grid"}))
    sweep_id = r.json()["id"]
    other = {"Authorization": f"Bearer {make_key(settings, ['finetune'], tenant='other')}"}
    for method, path, body in [
        ("GET", "", None),
        ("POST", "/cancel", None),
        ("POST", "/promote", {"alias": "production"}),
    ]:
        r = await client.request(method, f"/v1/fine_tuning/sweeps/{sweep_id}{path}", headers=other, json=body)
        assert r.status_code == 404, (path, r.text)
    assert (await client.get("/v1/fine_tuning/sweeps", headers=other)).json()["data"] == []
    # nor use this tenant's files or model for a sweep of its own
    r = await client.post(
        "/v1/fine_tuning/sweeps", headers=other, json=sweep_body(train, valid, {"method": "grid"})
    )
    assert r.status_code == 404, r.text
    assert (await client.get(f"/v1/fine_tuning/sweeps/{sweep_id}")).json()["status"] == "queued"
    page = (await client.get("/v1/fine_tuning/sweeps?limit=1")).json()
    assert [s["id"] for s in page["data"]] == [sweep_id] and page["has_more"] is False


HOSTILE = [
    ({"space": {"__import__('os')": {"type": "choice", "values": [1]}}}, "cannot be searched"),
    ({"space": {"learning_rate": {"type": "log_uniform", "low": 0, "high": 1}}}, "low > 0"),
    ({"space": {"learning_rate": {"type": "uniform", "low": 0.1, "high": 0.01}}}, "below high"),
    ({"space": {"learning_rate": {"type": "uniform", "low": 0.01, "high": 50}}}, "learning_rate"),
    ({"space": {"batch_size": {"type": "log_uniform", "low": 1, "high": 64}}}, "int or choice"),
    ({"space": {"batch_size": {"type": "choice", "values": [16, 10**9]}}}, "batch_size"),
    ({"space": {"optimizer": {"type": "choice", "values": ["adam", "rm -rf"]}}}, "optimizer"),
    ({"space": {"batch_size": {"type": "choice", "values": [16, "16"]}}}, "not a valid int"),
    ({"space": {"learning_rate": {"type": "choice", "values": list(range(1, 40))}}}, "values"),
    ({"space": {}}, "at least one"),
    ({"search": {"method": "grid", "max_trials": 1000}}, "max_trials"),
    ({"search": {"method": "grid", "parallel": 100}}, "parallel"),
    ({"search": {"method": "grid", "max_trials": 9}}, "exceeds the grid"),
    ({"search": {"method": "random"}}, "max_trials is required"),
    ({"search": {"method": "grid", "metric": "r2"}}, "search.metric"),
    ({"search": {"method": "grid", "code": "x"}}, "code"),
    ({"search": {"method": "evolution", "max_trials": 3}}, "method"),
    ({"early_termination": {"type": "median", "exec": "1"}}, "exec"),
    ({"hyperparameters": {"epochs": 10**6}}, "epochs"),
    (
        {
            "space": {
                n: {"type": "choice", "values": [1, 2, 3, 4, 5]}
                for n in ("epochs", "batch_size", "warmup_steps")
            }
        },
        "the grid has 125 points",
    ),
]


@pytest.mark.parametrize(("change", "message"), HOSTILE)
async def test_hostile_sweep_specs_are_refused(client, change, message) -> None:
    train, valid = await setup_classifier(client)
    body = sweep_body(train, valid, {"method": "grid"})
    body.update(change)
    r = await client.post("/v1/fine_tuning/sweeps", json=body)
    assert r.status_code == 422, r.text
    assert message in r.text, r.text
    assert (await client.get("/v1/fine_tuning/sweeps")).json()["data"] == []
    assert (await client.get("/v1/fine_tuning/jobs")).json()["data"] == []


async def test_a_killed_trainer_loses_no_trial(client, settings) -> None:
    """A trainer dies holding a trial (its lease runs out): another trainer reclaims it through
    the job lease, and the sweep still ends with every trial done once."""
    train, valid = await setup_classifier(client)
    body = sweep_body(train, valid, {"method": "grid", "parallel": 2}, hyperparameters={"epochs": 2})
    sweep_id = (await client.post("/v1/fine_tuning/sweeps", json=body)).json()["id"]
    dead = TrainerThread(settings)  # never started: its advancer and store act as the dead one did
    try:
        dead.trainer.sweeps.advance(sweep_id)  # trials 0 and 1 made and dispatched
        store = dead.trainer.store
        sweep = (await client.get(f"/v1/fine_tuning/sweeps/{sweep_id}")).json()
        assert [t["status"] for t in sweep["trials"]] == ["queued", "queued"]
        lost = sweep["trials"][0]["job_id"]
        assert store.claim(lost, "killed-trainer", -1.0)  # claimed, then the process was killed
    finally:
        dead.trainer.queue.r.close()
        dead._db_engine.dispose()
    t = TrainerThread(settings).start()
    try:
        sweep = await wait_sweep(client, sweep_id)
    finally:
        t.stop()
    assert sweep["status"] == "succeeded", sweep
    assert [x["number"] for x in sweep["trials"]] == [0, 1, 2, 3]
    assert {x["status"] for x in sweep["trials"]} == {"succeeded"}
    jobs = (await client.get("/v1/fine_tuning/jobs?limit=100")).json()["data"]
    assert sorted(j["sweep_trial"] for j in jobs if j["sweep_id"] == sweep_id) == [0, 1, 2, 3]
    events = (await client.get(f"/v1/fine_tuning/jobs/{lost}/events")).json()["data"]
    assert any("trainer stopped answering" in e["message"] for e in events)


async def test_early_termination_prunes_a_hopeless_trial(client, trainer) -> None:
    """The median rule: a trial whose accuracy after an epoch is below the median of the finished
    trials at that epoch is stopped (the job cancelled, the trial `pruned`); the sweep goes on."""
    train, valid = await setup_classifier(client)
    space = {
        "epochs": {"type": "choice", "values": [1, 30]},
        "learning_rate": {"type": "choice", "values": [0.03, 1e-7]},
    }  # in grid order: (1, 0.03), (1, 1e-7), (30, 0.03), (30, 1e-7): the last is slow and hopeless
    body = sweep_body(
        train,
        valid,
        {"method": "grid"},
        space=space,
        hyperparameters={"batch_size": 4, "optimizer": "sgd"},
        early_termination={"type": "median", "warmup_epochs": 0, "min_trials": 1},
    )
    r = await client.post("/v1/fine_tuning/sweeps", json=body)
    assert r.status_code == 200, r.text
    sweep = await wait_sweep(client, r.json()["id"])
    assert sweep["status"] == "succeeded", sweep
    last = sweep["trials"][3]
    assert last["hyperparameters"] == {"epochs": 30, "learning_rate": 1e-7} and last["status"] == "pruned", (
        last
    )
    job = (await client.get(f"/v1/fine_tuning/jobs/{last['job_id']}")).json()
    assert job["status"] == "cancelled" and job["error"]["code"] == "pruned", job
    assert (job["progress"] or {}).get("epoch", 0) < 30 and " of 30 " in job["error"]["message"], job
    assert sweep["trials"][2]["status"] == "succeeded" and sweep["best_trial"]["number"] in (0, 2)
    # trial 1 is as hopeless, but one epoch is all it has: it finishes. Every version the sweep
    # made is a trial's fine_tuned_model; a pruned trial made none.
    trained = [t["fine_tuned_model"] for t in sweep["trials"][:3]]
    assert [t["status"] for t in sweep["trials"][:3]] == ["succeeded"] * 3 and all(trained), sweep
    versions = (await client.get(f"/v1/models/{sweep['target_model']}")).json()["versions"]
    assert sorted(f"{sweep['target_model']}:{v}" for v in versions) == sorted(trained)
    assert last["fine_tuned_model"] is None


async def test_idempotency_key_makes_one_sweep(client) -> None:
    train, valid = await setup_classifier(client)
    body = sweep_body(train, valid, {"method": "grid"})
    headers = {"Idempotency-Key": "sweep-once"}
    first = await client.post("/v1/fine_tuning/sweeps", json=body, headers=headers)
    again = await client.post("/v1/fine_tuning/sweeps", json=body, headers=headers)
    assert first.status_code == again.status_code == 200 and first.json()["id"] == again.json()["id"]
    other = await client.post("/v1/fine_tuning/sweeps", json={**body, "seed": 8}, headers=headers)
    assert other.status_code == 422 and "another request body" in other.text
    assert len((await client.get("/v1/fine_tuning/sweeps")).json()["data"]) == 1
