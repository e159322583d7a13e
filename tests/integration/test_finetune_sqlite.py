"""The job store's lease logic on SQLite too (the embedded `kiln serve` runs a trainer)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from migrations.upgrade import upgrade
from model_store.blobs import BlobStore, sha256_of
from model_store.db import FineTuneJobRow, make_db_engine, make_sessionmaker, utcnow
from model_store.jobs import JobStore, LeaseLost
from model_store.registry import Registry
from model_store.signature import Signature, VersionConfig
from tests.ft_data import MLP_SIGNATURE, mlp_bytes


def test_claim_renew_and_requeue_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kiln.db'}"
    upgrade(url)
    db_engine = make_db_engine(url)
    sessions = make_sessionmaker(db_engine)
    blobs = BlobStore(tmp_path / "blobs")
    registry = Registry(sessions, blobs)
    tenant = registry.ensure_tenant("t")
    registry.create_model(tenant, "clf")
    data = mlp_bytes()
    upload = tmp_path / "clf.pt"
    upload.write_bytes(data)
    version = registry.add_version(
        tenant,
        "clf",
        "torchscript",
        upload,
        sha256_of([data]),
        len(data),
        Signature.model_validate(MLP_SIGNATURE),
        VersionConfig(),
    )
    store = JobStore(sessions)
    row = FineTuneJobRow(
        id="ftjob-1",
        tenant_id=tenant,
        status="queued",
        model="clf",
        base_version_id=version.id,
        target_model="clf-ft",
        training_file="file-1",
        spec=json.loads('{"task": "classification", "hyperparameters": {}}'),
        seed=1,
        attempts=0,
    )
    store.create_job(row, ["queued"], None)
    assert store.claim("ftjob-1", "a", 30) and not store.claim("ftjob-1", "b", 30)
    store.renew("ftjob-1", "a", 30, {"step": 1})
    assert store.requeue_expired() == []
    with sessions() as s:  # the trainer was killed: its lease runs out
        job = s.get(FineTuneJobRow, "ftjob-1")
        assert job is not None
        job.lease_expires_at = utcnow() - timedelta(seconds=1)
        s.commit()
    assert store.requeue_expired() == ["ftjob-1"]
    try:
        store.renew("ftjob-1", "a", 30, None)
        raise AssertionError("a stale trainer must lose the job")
    except LeaseLost:
        pass
    assert store.queued_job_ids() == ["ftjob-1"] and store.claim("ftjob-1", "b", 30)
    db_engine.dispose()
