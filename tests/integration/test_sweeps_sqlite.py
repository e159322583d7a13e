"""The sweep store and advancer on SQLite (the embedded `kiln serve` runs a trainer): racing
advancers make each trial once, the search is rebuilt from the trials, the best one wins."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from migrations.upgrade import upgrade
from model_store.blobs import BlobStore, sha256_of
from model_store.db import FineTuneJobRow, SweepRow, make_db_engine, make_sessionmaker
from model_store.errors import Conflict, NotFound
from model_store.jobs import EpochRecord, JobStore, LeaseLost
from model_store.registry import Registry
from model_store.signature import Signature, VersionConfig
from model_store.sweeps import SweepStore
from service.finetune.sweeps import sweep_public
from tests.ft_data import MLP_SIGNATURE, mlp_bytes
from workers.contract.finetune_spec import Hyperparameters
from workers.contract.sweep_spec import EarlyTermination, Search, SweepSpec, Uniform, check_space
from workers.finetune.job import JobContext, finish_with_version
from workers.finetune.sweep import SweepAdvancer, _child


@pytest.fixture
def world(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'kiln.db'}"
    upgrade(url)
    db_engine = make_db_engine(url)
    sessions = make_sessionmaker(db_engine)
    blobs = BlobStore(tmp_path / "blobs")
    registry = Registry(sessions, blobs)
    tenant = registry.ensure_tenant("t")
    registry.create_model(tenant, "clf")
    data = mlp_bytes()
    (tmp_path / "clf.pt").write_bytes(data)
    sig = Signature.model_validate(MLP_SIGNATURE)
    version = registry.add_version(
        tenant, "clf", "torchscript", tmp_path / "clf.pt", sha256_of([data]), len(data), sig, VersionConfig()
    )
    ctx = JobContext(JobStore(sessions), registry, blobs, "t1", 30, 1, threading.Event())
    yield tenant, version.id, ctx
    db_engine.dispose()


def _sweep(tenant: int, base: int, sweep_id: str, parallel: int = 2, **spec_fields: Any) -> SweepRow:
    spec = SweepSpec(
        task="classification",
        hyperparameters=Hyperparameters(epochs=1),
        search=Search(method="bayesian", max_trials=5, parallel=parallel),
        space={"learning_rate": Uniform(type="log_uniform", low=1e-3, high=1e-1)},
        **spec_fields,
    )
    return SweepRow(
        id=sweep_id,
        tenant_id=tenant,
        status="queued",
        model="clf",
        base_version_id=base,
        target_model="clf-sweep",
        training_file="file-1",
        spec=check_space(spec).model_dump(mode="json"),
        seed=5,
    )


def _finish_trials(ctx: JobContext, sweep_id: str) -> None:
    """What the trainers would do: every queued trial succeeds; accuracy grows with the rate."""
    with ctx.store.sessions() as s:
        for job in s.query(FineTuneJobRow).filter(FineTuneJobRow.sweep_id == sweep_id):
            if job.status == "queued":
                lr = job.spec["hyperparameters"]["learning_rate"]
                job.status, job.result = "succeeded", {"metrics": {"accuracy": lr, "valid_loss": 1 - lr}}
                job.fine_tuned_model = f"clf-sweep:{job.sweep_trial}"
        s.commit()


def test_racing_advancers_make_each_trial_once(world) -> None:
    tenant, base, ctx = world
    store = SweepStore(ctx.store.sessions)
    store.create(_sweep(tenant, base, "ftsweep-1"), None)
    queued: list[str] = []
    first, second = SweepAdvancer(ctx, queued.append), SweepAdvancer(ctx, queued.append)
    row, _ = store.load("ftsweep-1")  # type: ignore[misc]
    spec = SweepSpec.model_validate(row.spec)
    same = [_child(row, spec, n, {"learning_rate": 0.01}) for n in (0, 1)]
    again = [_child(row, spec, n, {"learning_rate": 0.02}) for n in (0, 1)]
    assert store.add_trials("ftsweep-1", same) and not store.add_trials("ftsweep-1", again)
    first.advance("ftsweep-1")
    second.advance("ftsweep-1")  # parallel 2 and two running: nothing to add
    row, trials = store.trials_of(tenant, "ftsweep-1")
    assert [t.sweep_trial for t in trials] == [0, 1] and row.status == "running" and queued == []

    while row.status == "running":
        _finish_trials(ctx, "ftsweep-1")
        (first if len(queued) % 2 else second).advance("ftsweep-1")
        row, trials = store.trials_of(tenant, "ftsweep-1")
    assert [t.sweep_trial for t in trials] == [0, 1, 2, 3, 4] and len(queued) == 3
    assert row.status == "succeeded"
    rates = [t.spec["hyperparameters"]["learning_rate"] for t in trials]
    assert row.result is not None and row.result["best_trial"]["value"] == max(rates)
    assert row.result["trials"] == {"succeeded": 5}


def test_cancel_and_tenancy_on_sqlite(world) -> None:
    tenant, base, ctx = world
    store = SweepStore(ctx.store.sessions)
    store.create(_sweep(tenant, base, "ftsweep-2"), None)
    SweepAdvancer(ctx, lambda _j: None).advance("ftsweep-2")
    with pytest.raises(NotFound):
        store.cancel(tenant + 1, "ftsweep-2")
    row = store.cancel(tenant, "ftsweep-2")
    assert row.status == "cancelled"
    _row, trials = store.trials_of(tenant, "ftsweep-2")
    assert [t.status for t in trials] == ["cancelled", "cancelled"]
    with pytest.raises(Conflict):
        store.cancel(tenant, "ftsweep-2")
    with pytest.raises(Conflict):
        store.request_promotion(tenant, "ftsweep-2", "production")
    SweepAdvancer(ctx, lambda _j: None).advance("ftsweep-2")  # a cancelled sweep makes no trials
    assert len(store.trials_of(tenant, "ftsweep-2")[1]) == 2


def _train(ctx: JobContext, job_id: str, *accuracies: float, stopped_early: bool = False) -> None:
    """What a trainer records: the job claimed, then one epoch per accuracy (checkpoint and all)."""
    if ctx.store.job_by_id(job_id).status == "queued":  # type: ignore[union-attr]
        assert ctx.store.claim(job_id, ctx.owner, 30)
    done = len(ctx.store.checkpoints(ctx.store.job_by_id(job_id).tenant_id, job_id))  # type: ignore[union-attr]
    for epoch, acc in enumerate(accuracies, done + 1):
        valid = {"accuracy": acc, "valid_loss": 1 - acc}
        if stopped_early and epoch == done + len(accuracies):
            valid["stopped_early"] = True
        record = EpochRecord(
            epoch, epoch * 10, f"{epoch:064x}", [{"step": epoch * 10, "train_loss": 1.0}], valid
        )
        ctx.store.record_epoch(job_id, ctx.owner, record)


def test_a_trial_that_trained_its_last_epoch_finishes_and_names_its_version(world) -> None:
    """Early termination (median, no warm-up, one finished trial): a hopeless trial is pruned
    midway ("after epoch 1 of 2"), but one that recorded its last epoch (its budget, or where early
    stopping stopped it) is left to finish: the sweep is never told it was pruned while its
    version is registered, and the trial names that version. A trial cancelled with its sweep
    while its trainer registers its version names that version too (cancelled, with an event)."""
    tenant, base, ctx = world
    store = SweepStore(ctx.store.sessions)
    early = EarlyTermination(warmup_epochs=0, min_trials=1)
    row = _sweep(tenant, base, "ftsweep-3", early_termination=early)
    row.spec = {**row.spec, "hyperparameters": {**row.spec["hyperparameters"], "epochs": 2}}
    store.create(row, None)
    advancer = SweepAdvancer(ctx, lambda _j: None)
    advancer.advance("ftsweep-3")
    first, second = store.trials_of(tenant, "ftsweep-3")[1]
    _train(ctx, first.id, 0.8, 0.9)
    finish_with_version(ctx, first.id, "clf-sweep:1", {"metrics": {"accuracy": 0.9}, "version": 1}, "ready")

    _train(ctx, second.id, 0.1)  # epoch 1 of 2, far below the median: pruned
    advancer.advance("ftsweep-3")
    pruned = ctx.store.job_by_id(second.id)
    assert pruned is not None and pruned.status == "cancelled" and pruned.error is not None
    assert pruned.error["code"] == "pruned" and "after epoch 1 of 2 " in pruned.error["message"]

    third, fourth = store.trials_of(tenant, "ftsweep-3")[1][2:]  # made in the room the pruning left
    _train(ctx, third.id, 0.1, 0.1)  # epoch 2 of 2: as hopeless, but its training is over
    _train(ctx, fourth.id, 0.1, stopped_early=True)  # early stopping ended it after epoch 1
    advancer.advance("ftsweep-3")
    for job_id in (third.id, fourth.id):
        assert ctx.store.job_by_id(job_id).status == "running"  # type: ignore[union-attr]
        assert not store.prune(job_id, "pruned by a racing advancer", {})  # nor by a racing one
    finish_with_version(ctx, third.id, "clf-sweep:2", {"metrics": {"accuracy": 0.1}, "version": 2}, "ready")

    store.cancel(tenant, "ftsweep-3")  # while the fourth's trainer registers clf-sweep:3
    with pytest.raises(LeaseLost):
        finish_with_version(ctx, fourth.id, "clf-sweep:3", {"version": 3}, "ready")
    sweep, trials = store.trials_of(tenant, "ftsweep-3")
    shown = [(t.status, t.fine_tuned_model) for t in sweep_public(sweep, trials).trials]
    assert shown == [
        ("succeeded", "clf-sweep:1"),
        ("pruned", None),
        ("succeeded", "clf-sweep:2"),
        ("cancelled", "clf-sweep:3"),
    ]
    events, _ = ctx.store.events(tenant, fourth.id, 0, 100)
    assert any("after its version clf-sweep:3 was registered" in e.message for e in events)
