"""Running one claimed fine-tune job: data, model, resume, epochs with checkpoints, the result.

The model work (building, training, evaluating, exporting) runs in a fenced child
(workers/finetune/child.py via workers/finetune/fence.py) that reads only this job's files; this side keeps
the database, the lease, events, metrics and the blob store, and acts on the child's messages
(workers/contract/finetune_messages.py). Closing the child (hand-back, cancel, lease lost) stops its work.

Every epoch ends with one database transaction holding its step metrics, validation metrics and
checkpoint row (the checkpoint bytes are already in the blob store), so a trainer killed mid-epoch
leaves no trace of that epoch and the next trainer redoes it from the previous checkpoint: no
epoch is lost or recorded twice.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from model_store.blob_refs import prune_ended
from model_store.blobs import BlobStore
from model_store.db import FileRow, FineTuneJobRow
from model_store.errors import Conflict
from model_store.formats import ADAPTER_FORMAT
from model_store.jobs import EpochRecord, JobStore, LeaseLost, new_id
from model_store.registry import Registry, ResolvedVersion
from model_store.signature import Signature
from workers.contract.finetune_check import (
    FenceLimits,
    evaluate_version,
    file_ref,
    readable_paths,
    version_ref,
)
from workers.contract.finetune_messages import Done, Epoch, Error, Started, Step
from workers.contract.finetune_spec import DEFAULT_VALIDATION_SPLIT, JobSpec
from workers.finetune.child import DatasetUnusable
from workers.finetune.fence import TrainingFailed
from workers.finetune.group import MAX_RESTARTS, RankDied, Training, open_training
from workers.finetune.metrics import TrainerMetrics
from workers.finetune.promote import Candidate, decide

log = logging.getLogger("kiln.trainer")
__all__ = [
    "DatasetUnusable",
    "HandBack",
    "JobContext",
    "execute",
    "finish_with_version",
    "lineage_file",
    "prune",
]


class HandBack(Exception):
    """The trainer is stopping: give the job back to the queue."""


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
    limits: FenceLimits = field(default_factory=FenceLimits)


class _Heartbeat:
    """Called after every message from the training process and every renew_interval_s of
    silence: hands the job back when the trainer stops, renews the lease (which fails once the
    job is cancelled, paused or taken over) and publishes live progress."""

    def __init__(self, ctx: JobContext, job_id: str) -> None:
        self.ctx, self.job_id = ctx, job_id
        self.total = 0
        self.progress: dict[str, Any] | None = None
        self.parent_metrics: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []  # this epoch's steps, recorded with its checkpoint
        self._next = 0.0

    def __call__(self) -> None:
        if self.ctx.stopping.is_set():
            raise HandBack(self.job_id)
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.ctx.renew_interval_s
            self.ctx.store.renew(self.job_id, self.ctx.owner, self.ctx.lease_s, self.progress)
            self.progress = None

    def publish_now(self, progress: dict[str, Any]) -> None:
        """Renew with this progress at the next call, whatever the interval (e.g. total steps)."""
        self.progress, self._next = progress, 0.0


def _blob(ctx: JobContext, sha256: str) -> str:
    return str(ctx.blobs.path_for(sha256).resolve())


def child_args(ctx: JobContext, row: FineTuneJobRow, base: ResolvedVersion) -> dict[str, Any]:
    """The job as the fenced child sees it: its files (read-only), never the database."""
    return {
        "v": 1,
        "spec": row.spec,
        "seed": row.seed,
        "base": version_ref(ctx.blobs, base),
        "train": file_ref(ctx.blobs, ctx.store.get_file(row.tenant_id, row.training_file)),
        "valid": file_ref(ctx.blobs, ctx.store.get_file(row.tenant_id, row.validation_file))
        if row.validation_file
        else None,
    }


def evaluate_in_fence(ctx: JobContext, row: FineTuneJobRow, version: ResolvedVersion) -> dict[str, Any]:
    """`version`'s validation metrics on this job's validation rows (the same rows as the job's
    for the same seed), computed in a fenced child (promotion); CheckFailed if it cannot be."""
    args = child_args(ctx, row, version)
    return evaluate_version(args, readable_paths(args), ctx.limits)


def _resume_args(ctx: JobContext, row: FineTuneJobRow, args: dict[str, Any]) -> None:
    """Resume from the last checkpoint and, when early stopping's best epoch is an earlier one,
    hand its checkpoint over too (its weights are what the result restores)."""
    ckpt = ctx.store.latest_checkpoint(row.id)
    if ckpt is None:
        return
    args["checkpoint"] = {"path": _blob(ctx, ckpt.sha256), "sha256": ckpt.sha256, "epoch": ckpt.epoch}
    best = ckpt.metrics.get("best_epoch")
    early_stopping = (row.spec.get("hyperparameters") or {}).get("early_stopping")
    if early_stopping and best and int(best) != ckpt.epoch:
        found = [c for c in ctx.store.checkpoints(row.tenant_id, row.id) if c.epoch == int(best)]
        if found:
            args["best_checkpoint"] = {"path": _blob(ctx, found[0].sha256), "sha256": found[0].sha256}


def execute(ctx: JobContext, job_id: str) -> None:
    """Run the job from its last checkpoint; a distributed job whose rank was killed restarts
    its group from the checkpoint rank 0 wrote last (at most MAX_RESTARTS times)."""
    row = ctx.store.job_by_id(job_id)
    assert row is not None
    base = ctx.registry.by_version_id(row.base_version_id)
    beat = _Heartbeat(ctx, job_id)
    for restart in range(MAX_RESTARTS + 1):
        try:
            _attempt(ctx, row, base, beat)
            return
        except RankDied as exc:
            if restart == MAX_RESTARTS:
                raise
            beat.rows = []  # the unfinished epoch's steps: redone from the checkpoint
            text = f"{exc.error['message']}; the group restarts from its last checkpoint"
            ctx.store.add_event(job_id, text, level="warning", restart=restart + 1)


def _attempt(ctx: JobContext, row: FineTuneJobRow, base: ResolvedVersion, beat: _Heartbeat) -> None:
    args = child_args(ctx, row, base)
    _resume_args(ctx, row, args)
    processes = JobSpec.model_validate(row.spec).resources.processes
    with open_training(args, readable_paths(args), ctx.limits, processes) as proc:
        while True:
            got = proc.next(ctx.renew_interval_s)
            if got is not None and isinstance(got[0], Done):
                _finish(ctx, row, base, proc, got[0], _table(got[1]), beat.parent_metrics)
                return
            if got is not None:
                _on_message(ctx, row, proc, beat, got[0])
            beat()


def _on_message(ctx: JobContext, row: FineTuneJobRow, proc: Training, beat: _Heartbeat, msg: Any) -> None:
    job_id = row.id
    if isinstance(msg, Error):
        raise TrainingFailed(msg.code, msg.message)
    if isinstance(msg, Step):
        if ctx.metrics is not None:
            ctx.metrics.step(float(msg.row.get("train_loss", 0.0)), msg.seconds)
        beat.progress = {**msg.row, "total_steps": beat.total}
        beat.rows.append(dict(msg.row))
    elif isinstance(msg, Started):
        beat.total = msg.total_steps
        beat.publish_now({**(row.progress or {}), "total_steps": msg.total_steps})
        if msg.resumed_epoch is not None:
            text = f"resumed from the checkpoint of epoch {msg.resumed_epoch}"
            ctx.store.add_event(job_id, text, epoch=msg.resumed_epoch)
        else:
            ctx.store.add_event(
                job_id,
                f"training started on {msg.device}{_ranks(msg.processes)}: {msg.train_rows} training rows, "
                f"{msg.valid_rows} validation rows, {msg.total_steps} steps",
                parent_metrics=msg.parent_metrics,
            )
        beat.parent_metrics = dict(msg.parent_metrics)
    elif isinstance(msg, Epoch):
        if ctx.metrics is not None:
            ctx.metrics.epoch(float(msg.valid.get("seconds", 0.0)))
        sha, _ = proc.store(ctx.blobs, msg.checkpoint)
        rows, beat.rows = [r for r in beat.rows if r.get("epoch") == msg.epoch], []
        ctx.store.record_epoch(job_id, ctx.owner, EpochRecord(msg.epoch, msg.step, sha, rows, msg.valid))


def _ranks(processes: int) -> str:
    return f" with {processes} processes (DDP)" if processes > 1 else ""


def _table(buffers: list[bytes]) -> dict[str, list[Any]]:
    """The per-row results the child sent with `done` (JSON, checked before use)."""
    try:
        table = json.loads(buffers[0]) if len(buffers) == 1 else None
    except ValueError:
        table = None
    keys = ["lines", "labels", "predicted", "parent_predicted"]
    if isinstance(table, dict) and "probabilities" in table:
        keys.append("probabilities")
    if not isinstance(table, dict) or not all(isinstance(table.get(k), list) for k in keys):
        raise TrainingFailed("protocol_error", "the training process sent malformed results")
    if len({len(table[k]) for k in keys}) != 1:
        raise TrainingFailed("protocol_error", "the training process sent malformed results")
    return {k: table[k] for k in keys}


def _finish(
    ctx: JobContext,
    row: FineTuneJobRow,
    base: ResolvedVersion,
    proc: Training,
    done: Done,
    table: dict[str, list[Any]],
    parent: dict[str, Any],
) -> None:
    spec = JobSpec.model_validate(row.spec)
    final = dict(done.metrics)
    results_file = _results_file(ctx, row, table)
    lineage = _lineage(ctx, row, spec, base, done, parent)
    version = register_result(
        ctx, row, spec.publish_existing, (base, proc), done, lineage, f"fine-tuned from {row.model}"
    )
    result: dict[str, Any] = {
        "metrics": final,
        "parent_metrics": parent,
        "version": version,
        "epochs_completed": done.epochs_completed,
        "stopped_early": done.stopped_early,
        "best_epoch": done.best_epoch,
        "trained_tokens": done.trained_tokens,
        "result_files": [results_file],
    }
    if spec.promote:
        sig = Signature.model_validate(done.signature)
        cand = Candidate(row.tenant_id, row.target_model, version, base.format, sig, final)
        evaluate = functools.partial(evaluate_in_fence, ctx, row)
        result["promotion"] = decide(ctx, cand, spec, (base, parent), evaluate)
        result["promoted"] = result["promotion"]["promoted"]
        ctx.store.add_event(row.id, result["promotion"]["reason"])
    prune(ctx, row.id, spec.keep_checkpoints)
    name = f"{row.target_model}:{version}"
    finish_with_version(ctx, row.id, name, result, f"fine-tuned model {name} is ready")


def finish_with_version(
    ctx: JobContext, job_id: str, fine_tuned_model: str, result: dict[str, Any], message: str
) -> None:
    """The job succeeded with its version registered. Cancelled meanwhile (LeaseLost), it still
    names that version, which serves: never a version that no job points to."""
    try:
        ctx.store.finish(
            job_id, ctx.owner, "succeeded", fine_tuned_model=fine_tuned_model, result=result, message=message
        )
    except LeaseLost:
        if ctx.store.name_late_version(job_id, fine_tuned_model, result):
            log.warning("job %s: cancelled after its version %s was registered", job_id, fine_tuned_model)
        raise


def prune(ctx: JobContext, job_id: str, keep_last: int) -> None:
    """The job has ended: keep the best epoch's checkpoint and the last N, delete the rest (on
    success before the job's last event, so that a follower of the events sees it). Never raises."""
    try:
        pruned = prune_ended(ctx.store.sessions, ctx.blobs, job_id, keep_last)
    except Exception:
        log.exception("job %s: pruning its checkpoints failed", job_id)
        return
    if pruned:
        ctx.store.add_event(
            job_id, f"deleted the checkpoints of epochs {pruned} (kept the best and the last)"
        )


def _lineage(
    ctx: JobContext,
    row: FineTuneJobRow,
    spec: JobSpec,
    base: ResolvedVersion,
    done: Done,
    parent: dict[str, Any],
) -> dict[str, Any]:
    return {
        "job_id": row.id,
        "sweep_id": row.sweep_id,
        "parent": {
            "model": base.model,
            "version": base.version,
            "sha256": base.sha256,
        },
        # the sharing grants this version depends on (model_store/grants.py): withdrawn, it stops serving
        "base_grants": ctx.registry.base_grants(base.version_id, row.tenant_id),
        "training_file": lineage_file(ctx, row.tenant_id, row.training_file),
        "validation_file": row.validation_file,
        "validation_split": None
        if row.validation_file
        else spec.validation_split or DEFAULT_VALIDATION_SPLIT,
        "task": spec.task,
        "hyperparameters": spec.hyperparameters.model_dump(mode="json"),
        "resources": spec.resources.model_dump(mode="json"),
        "seed": row.seed,
        "epochs_completed": done.epochs_completed,
        "metrics": dict(done.metrics),
        "parent_metrics": parent,
        "trainer_host": socket.gethostname(),
        "trainer_pid": os.getpid(),
        # a LoRA adapter is served on its base: the version it attaches to (registry.adapter_base)
        **({"adapter_of": base.version_id} if done.format == ADAPTER_FORMAT else {}),
    }


def lineage_file(ctx: JobContext, tenant_id: int, file_id: str | None) -> dict[str, str] | None:
    """A dataset file as every lineage names it: `{"id", "sha256"}` (None: the job had none).
    model_store/blob_refs.py reads it (and the bare id that compression lineages held before)."""
    if not file_id:
        return None
    return {"id": file_id, "sha256": ctx.store.get_file(tenant_id, file_id).sha256}


def register_result(
    ctx: JobContext,
    row: FineTuneJobRow,
    publish_existing: bool,
    source: tuple[ResolvedVersion, Any],
    result: Any,
    lineage: dict[str, Any],
    description: str,
) -> int:
    """Register a job's result (its `artifact`, `signature`, `format`, taken from the process in
    `source`) once: a retried finish finds the version this job already made. A job without
    `publish_existing` (its key lacked `manage`) publishes only into a model that holds no other
    versions (one it created), or only versions of its own sweep."""
    base, proc = source
    with contextlib.suppress(Conflict):
        ctx.registry.create_model(row.tenant_id, row.target_model, description)
    model = ctx.registry.get_model(row.tenant_id, row.target_model)
    versions = ctx.registry.list_versions(model.id)
    for v in versions:
        if (v.lineage or {}).get("job_id") == row.id:
            return v.version
    # a sweep's trials publish into the model its first trial made: versions of the same sweep
    ours = row.sweep_id is not None and all(
        (v.lineage or {}).get("sweep_id") == row.sweep_id for v in versions
    )
    if versions and not publish_existing and not ours:
        raise Conflict(
            f"model {row.target_model!r} was created by someone else meanwhile: publishing into an "
            "existing model needs the 'manage' scope"
        )
    tmp, sha, size = proc.take(ctx.blobs, result.artifact)
    sig = Signature.model_validate(result.signature)
    created = ctx.registry.add_version(
        row.tenant_id, row.target_model, result.format, tmp, sha, size, sig, base.config, lineage=lineage
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


def _results_file(ctx: JobContext, row: FineTuneJobRow, table: dict[str, list[Any]]) -> str:
    """Per validation example, the label and the predictions of the result and of the parent
    (CSV, a file of purpose fine-tune-results): what the fine-tune fixed, and what it broke."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["line", "label", "predicted", "parent_predicted", "probabilities"][: len(table)])
    for cells in zip(*table.values(), strict=True):
        writer.writerow([cells[0], *(_cell(c) for c in cells[1:])])
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
            stats={"rows": len(table["labels"])},
        )
    )
    return file_id
