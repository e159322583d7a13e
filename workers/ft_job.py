"""Running one claimed fine-tune job: data, model, resume, epochs with checkpoints, the result.

Every epoch ends with one database transaction holding its step metrics, validation metrics and
checkpoint row (the checkpoint bytes are already in the blob store), so a trainer killed mid-epoch
leaves no trace of that epoch and the next trainer redoes it from the previous checkpoint: no
epoch is lost or recorded twice.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from model_store.blobs import BlobStore, sha256_of
from model_store.db import FileRow, FineTuneJobRow
from model_store.errors import Conflict
from model_store.jobs import EpochRecord, JobStore, new_id
from model_store.registry import Registry, ResolvedVersion
from workers.datasets import Dataset, parse
from workers.ft_build import build
from workers.ft_metrics import TrainerMetrics
from workers.ft_promote import Candidate, decide
from workers.ft_spec import JobSpec
from workers.training import Run, split

log = logging.getLogger("kiln.trainer")
DEFAULT_VALIDATION_SPLIT = 0.2


class HandBack(Exception):
    """The trainer is stopping: give the job back to the queue."""


class DatasetUnusable(Exception):
    """A stored dataset no longer parses (it was validated at upload)."""


@dataclass(slots=True)
class JobContext:
    store: JobStore
    registry: Registry
    blobs: BlobStore
    owner: str
    lease_s: float
    renew_interval_s: float
    stopping: threading.Event
    metrics: TrainerMetrics | None = None


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Heartbeat:
    """Called after every optimizer step: renews the lease (which fails once the job is cancelled,
    paused or taken over) and publishes live progress, at most every renew_interval_s."""

    def __init__(self, ctx: JobContext, job_id: str, run: Run) -> None:
        self.ctx, self.job_id, self.run, self.total = ctx, job_id, run, run.total_steps
        self._next = 0.0

    def __call__(self, row: dict[str, Any]) -> None:
        if self.ctx.metrics is not None:
            self.ctx.metrics.step(row["train_loss"], self.run.last_step_seconds)
        if self.ctx.stopping.is_set():
            raise HandBack(self.job_id)
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.ctx.renew_interval_s
            progress = {**row, "total_steps": self.total}
            self.ctx.store.renew(self.job_id, self.ctx.owner, self.ctx.lease_s, progress)


def _load(ctx: JobContext, tenant_id: int, file_id: str) -> Dataset:
    row = ctx.store.get_file(tenant_id, file_id)
    ds, report = parse(ctx.blobs.read_verified(row.sha256), row.format)
    if ds is None:
        raise DatasetUnusable(f"file {file_id} is not usable: {report.summary()}")
    return ds


def load_data(ctx: JobContext, row: FineTuneJobRow, spec: JobSpec) -> tuple[Dataset, Dataset]:
    train = _load(ctx, row.tenant_id, row.training_file)
    if row.validation_file:
        return train, _load(ctx, row.tenant_id, row.validation_file)
    return split(train, spec.validation_split or DEFAULT_VALIDATION_SPLIT, row.seed)


def execute(ctx: JobContext, job_id: str) -> None:
    row = ctx.store.job_by_id(job_id)
    assert row is not None
    spec = JobSpec.model_validate(row.spec)
    base = ctx.registry.by_version_id(row.base_version_id)
    train, valid = load_data(ctx, row, spec)
    device = pick_device()
    built = build(base, ctx.blobs.read_verified(base.sha256), spec, [train, valid], device, row.seed)
    run = Run(built.module, built.sig, train, valid, spec, row.seed, device, built.encode)
    ctx.store.renew(job_id, ctx.owner, ctx.lease_s, None)  # building a large model takes a while
    parent_metrics = run.evaluate()
    parent_predictions = run.predictions()
    ckpt = ctx.store.latest_checkpoint(job_id)
    if ckpt is not None:
        run.load_state(ctx.blobs.read_verified(ckpt.sha256))
        ctx.store.add_event(job_id, f"resumed from the checkpoint of epoch {ckpt.epoch}", epoch=ckpt.epoch)
    else:
        ctx.store.add_event(
            job_id,
            f"training started on {device.type}: {len(train)} training rows, "
            f"{len(valid)} validation rows, {run.total_steps} steps",
            parent_metrics=parent_metrics,
        )
    beat = _Heartbeat(ctx, job_id, run)
    while not run.done():
        t0 = time.perf_counter()
        res = run.train_epoch(beat)
        res.valid["seconds"] = round(time.perf_counter() - t0, 3)
        if ctx.metrics is not None:
            ctx.metrics.epoch(res.valid["seconds"])
        sha, _ = ctx.blobs.put_bytes(run.state_bytes())
        ctx.store.record_epoch(job_id, ctx.owner, EpochRecord(res.epoch, res.step, sha, res.train, res.valid))
    final = run.evaluate()
    results_file = _results_file(ctx, row, run, parent_predictions)
    _finish(ctx, row, spec, base, run, parent_metrics, final, results_file, built.export, valid)


def _finish(
    ctx: JobContext,
    row: FineTuneJobRow,
    spec: JobSpec,
    base: ResolvedVersion,
    run: Run,
    parent: dict[str, Any],
    final: dict[str, Any],
    results_file: str,
    export: Callable[[Any], tuple[bytes, str]],
    valid: Dataset,
) -> None:
    lineage = {
        "job_id": row.id,
        "parent": {
            "model": base.model,
            "version": base.version,
            "sha256": base.sha256,
        },
        # the sharing grants this version depends on (model_store/grants.py): withdrawn, it stops serving
        "base_grants": ctx.registry.base_grants(base.version_id, row.tenant_id),
        "training_file": {
            "id": row.training_file,
            "sha256": ctx.store.get_file(row.tenant_id, row.training_file).sha256,
        },
        "validation_file": row.validation_file,
        "validation_split": None
        if row.validation_file
        else spec.validation_split or DEFAULT_VALIDATION_SPLIT,
        "task": spec.task,
        "hyperparameters": spec.hyperparameters.model_dump(mode="json"),
        "seed": row.seed,
        "epochs_completed": run.progress.epoch,
        "metrics": final,
        "parent_metrics": parent,
        "trainer_host": socket.gethostname(),
        "trainer_pid": os.getpid(),
    }
    version = _register(ctx, row, spec, base, run, lineage, export)
    result: dict[str, Any] = {
        "metrics": final,
        "parent_metrics": parent,
        "version": version,
        "epochs_completed": run.progress.epoch,
        "stopped_early": run.progress.stopped_early,
        "result_files": [results_file],
    }
    if spec.promote:
        cand = Candidate(row.tenant_id, row.target_model, version, base.format, run.sig, final)
        result["promotion"] = decide(ctx, cand, spec, (base, parent), valid, run.device)
        result["promoted"] = result["promotion"]["promoted"]
        ctx.store.add_event(row.id, result["promotion"]["reason"])
    ctx.store.finish(
        row.id,
        ctx.owner,
        "succeeded",
        fine_tuned_model=f"{row.target_model}:{version}",
        result=result,
        message=f"fine-tuned model {row.target_model}:{version} is ready",
    )


def _register(
    ctx: JobContext,
    row: FineTuneJobRow,
    spec: JobSpec,
    base: ResolvedVersion,
    run: Run,
    lineage: dict[str, Any],
    export: Callable[[Any], tuple[bytes, str]],
) -> int:
    """Register the result once (a retried finish finds the version this job already made).
    A job without `publish_existing` (its key lacked `manage`) publishes only into a model that
    holds no other versions: one it created."""
    with contextlib.suppress(Conflict):
        ctx.registry.create_model(row.tenant_id, row.target_model, f"fine-tuned from {row.model}")
    model = ctx.registry.get_model(row.tenant_id, row.target_model)
    versions = ctx.registry.list_versions(model.id)
    for v in versions:
        if (v.lineage or {}).get("job_id") == row.id:
            return v.version
    if versions and not spec.publish_existing:
        raise Conflict(
            f"model {row.target_model!r} was created by someone else meanwhile: publishing into an "
            "existing model needs the 'manage' scope"
        )
    run.module.to("cpu")
    run.module.eval()
    data, fmt = export(run.module)
    fd, tmp = ctx.blobs.new_tempfile()
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    created = ctx.registry.add_version(
        row.tenant_id,
        row.target_model,
        fmt,
        tmp,
        sha256_of([data]),
        len(data),
        run.sig,
        base.config,
        lineage=lineage,
    )
    return created.version


def _cell(value: Any) -> str:
    return (
        json.dumps(value)
        if isinstance(value, list)
        else f"{value:.6g}"
        if isinstance(value, float)
        else str(value)
    )


def _results_file(ctx: JobContext, row: FineTuneJobRow, run: Run, parent: list[Any]) -> str:
    """Per validation example, the label and the predictions of the result and of the parent
    (CSV, a file of purpose fine-tune-results): what the fine-tune fixed, and what it broke."""
    labels = run.valid_y.cpu().tolist()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["line", "label", "predicted", "parent_predicted"])
    for line, label, new, old in zip(run.valid_lines, labels, run.predictions(), parent, strict=True):
        writer.writerow([line, _cell(label), _cell(new), _cell(old)])
    data = out.getvalue().encode()
    sha, size = ctx.blobs.put_bytes(data)
    file_id = new_id("file")
    ctx.store.add_file(
        FileRow(
            id=file_id,
            tenant_id=row.tenant_id,
            filename=f"{row.id}-validation.csv",
            purpose="fine-tune-results",
            format="csv",
            sha256=sha,
            size_bytes=size,
            stats={"rows": len(labels)},
        )
    )
    return file_id
