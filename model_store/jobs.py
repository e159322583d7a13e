"""Fine-tune files and jobs in the database: the source of truth for a job's state.

Every query is scoped to a tenant (another tenant's file or job is NotFound). The trainer holds a
job through a lease (owner + expiry) renewed between steps; writes that belong to a run (epoch
results, the final state) only land while the writer still holds the lease and the job is running,
so a cancelled, paused or taken-over job is never overwritten by a stale trainer.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from model_store.db import (
    CheckpointRow,
    FileRow,
    FineTuneJobRow,
    IdempotencyKeyRow,
    JobEventRow,
    JobMetricRow,
    utcnow,
)
from model_store.errors import Conflict, NotFound

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running", "paused")
FINE_TUNE = "fine-tune"  # a row's kind; compression jobs share the table (workers/contract/compress_spec.py)
MAX_ATTEMPTS = 5  # a job that kills its trainer this often fails instead of looping forever


class LeaseLost(Exception):
    """The trainer no longer holds the job (cancelled, paused, or taken over)."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class EpochRecord:
    epoch: int
    step: int
    checkpoint_sha256: str
    train: list[dict[str, Any]]  # per step: {"step", "train_loss", "lr"}
    valid: dict[str, Any]  # the epoch's validation metrics


class JobStore:
    """`kind` scopes the API's reads and actions to one kind of job (the trainer's are by id)."""

    def __init__(self, sessions: sessionmaker[Session], kind: str = FINE_TUNE) -> None:
        self.sessions, self.kind = sessions, kind

    # files ---------------------------------------------------------------------------------------
    def add_file(self, row: FileRow) -> FileRow:
        with self.sessions() as s:
            s.add(row)
            s.commit()
            return row

    def get_file(self, tenant_id: int, file_id: str) -> FileRow:
        with self.sessions() as s:
            row = s.get(FileRow, file_id)
            if row is None or row.tenant_id != tenant_id:
                raise NotFound(f"file {file_id!r} not found")
            return row

    def list_files(
        self, tenant_id: int, after: str | None = None, limit: int = 10_000, purpose: str | None = None
    ) -> tuple[list[FileRow], bool]:
        """Newest first, a page after the file `after` (OpenAI's cursor), and whether more follow."""
        with self.sessions() as s:
            q = select(FileRow).where(FileRow.tenant_id == tenant_id)
            if purpose:
                q = q.where(FileRow.purpose == purpose)
            if after:
                anchor = self.get_file(tenant_id, after)
                q = q.where(
                    (FileRow.created_at < anchor.created_at)
                    | ((FileRow.created_at == anchor.created_at) & (FileRow.id < anchor.id))
                )
            q = q.order_by(FileRow.created_at.desc(), FileRow.id.desc()).limit(limit + 1)
            rows = list(s.scalars(q))
            return rows[:limit], len(rows) > limit

    # idempotency ---------------------------------------------------------------------------------
    def reserve_key(self, tenant_id: int, key: str, body_sha256: str) -> str | None:
        """Reserve an Idempotency-Key; returns the job id of an earlier identical request, if any.

        Raises Conflict while the first request is still creating its job and ValueError for the
        same key with another body."""
        with self.sessions() as s:
            s.add(IdempotencyKeyRow(tenant_id=tenant_id, key=key, body_sha256=body_sha256))
            try:
                s.commit()
                return None
            except IntegrityError:
                s.rollback()
            row = s.get(IdempotencyKeyRow, (tenant_id, key))
            if row is None:
                raise Conflict("a request with this Idempotency-Key is in progress")
            if row.body_sha256 != body_sha256:
                raise ValueError("this Idempotency-Key was used with another request body")
            if row.job_id is None:
                raise Conflict("a request with this Idempotency-Key is in progress")
            return row.job_id

    def release_key(self, tenant_id: int, key: str) -> None:
        with self.sessions() as s:
            s.execute(
                delete(IdempotencyKeyRow).where(
                    IdempotencyKeyRow.tenant_id == tenant_id,
                    IdempotencyKeyRow.key == key,
                    IdempotencyKeyRow.job_id.is_(None),
                )
            )
            s.commit()

    # jobs ----------------------------------------------------------------------------------------
    def create_job(self, row: FineTuneJobRow, events: Iterable[str], idem: tuple[int, str] | None) -> None:
        with self.sessions() as s:
            s.add(row)
            s.flush()
            for message in events:
                s.add(_event(row, message))
            if idem is not None:
                key = s.get(IdempotencyKeyRow, idem)
                if key is not None:
                    key.job_id = row.id
            s.commit()

    def get_job(self, tenant_id: int, job_id: str) -> FineTuneJobRow:
        with self.sessions() as s:
            return _job(s, tenant_id, job_id, kind=self.kind)

    def job_by_id(self, job_id: str) -> FineTuneJobRow | None:
        with self.sessions() as s:
            return s.get(FineTuneJobRow, job_id)

    def list_jobs(self, tenant_id: int, after: str | None, limit: int) -> tuple[list[FineTuneJobRow], bool]:
        with self.sessions() as s:
            q = select(FineTuneJobRow).where(
                FineTuneJobRow.tenant_id == tenant_id, FineTuneJobRow.kind == self.kind
            )
            if after:
                anchor = _job(s, tenant_id, after, kind=self.kind)
                q = q.where(
                    (FineTuneJobRow.created_at < anchor.created_at)
                    | ((FineTuneJobRow.created_at == anchor.created_at) & (FineTuneJobRow.id < anchor.id))
                )
            q = q.order_by(FineTuneJobRow.created_at.desc(), FineTuneJobRow.id.desc()).limit(limit + 1)
            rows = list(s.scalars(q))
            return rows[:limit], len(rows) > limit

    def transition(
        self, tenant_id: int, job_id: str, allowed: tuple[str, ...], to: str, message: str
    ) -> FineTuneJobRow:
        """Move a job between states (API actions: cancel, pause, resume)."""
        with self.sessions() as s:
            row = _job(s, tenant_id, job_id, lock=True, kind=self.kind)
            if row.status not in allowed:
                raise Conflict(f"job is {row.status}; cannot move it to {to}")
            row.status = to
            if to in ("queued", "paused", "cancelled"):
                row.lease_owner, row.lease_expires_at = None, None
            if to in TERMINAL:
                row.finished_at = utcnow()
            s.add(_event(row, message))
            s.commit()
            return row

    # events, checkpoints, metrics ----------------------------------------------------------------
    def add_event(self, job_id: str, message: str, level: str = "info", **data: Any) -> None:
        with self.sessions() as s:
            row = s.get(FineTuneJobRow, job_id)
            if row is not None:
                s.add(_event(row, message, level, data or None))
                s.commit()

    def events(self, tenant_id: int, job_id: str, after: int, limit: int) -> tuple[list[JobEventRow], bool]:
        with self.sessions() as s:
            _job(s, tenant_id, job_id, kind=self.kind)
            rows = list(
                s.scalars(
                    select(JobEventRow)
                    .where(JobEventRow.job_id == job_id, JobEventRow.id > after)
                    .order_by(JobEventRow.id)
                    .limit(limit + 1)
                )
            )
            return rows[:limit], len(rows) > limit

    def checkpoints(self, tenant_id: int, job_id: str) -> list[CheckpointRow]:
        with self.sessions() as s:
            _job(s, tenant_id, job_id)
            q = select(CheckpointRow).where(CheckpointRow.job_id == job_id).order_by(CheckpointRow.epoch)
            return list(s.scalars(q))

    def metrics(self, tenant_id: int, job_id: str) -> list[JobMetricRow]:
        with self.sessions() as s:
            _job(s, tenant_id, job_id)
            q = (
                select(JobMetricRow)
                .where(JobMetricRow.job_id == job_id)
                .order_by(JobMetricRow.kind, JobMetricRow.step)
            )
            return list(s.scalars(q))

    # trainer side --------------------------------------------------------------------------------
    def queued_job_ids(self) -> list[str]:
        with self.sessions() as s:
            q = select(FineTuneJobRow.id).where(FineTuneJobRow.status == "queued")
            return list(s.scalars(q.order_by(FineTuneJobRow.created_at)))

    def requeue_expired(self) -> list[str]:
        """Running jobs whose trainer stopped renewing its lease go back to the queue."""
        now = utcnow()
        out: list[str] = []
        with self.sessions() as s:
            q = select(FineTuneJobRow).where(
                FineTuneJobRow.status == "running", FineTuneJobRow.lease_expires_at < now
            )
            for row in s.scalars(q.with_for_update(skip_locked=True)):
                row.lease_owner, row.lease_expires_at = None, None
                if row.attempts >= MAX_ATTEMPTS:
                    row.status, row.finished_at = "failed", now
                    row.error = {
                        "code": "interrupted",
                        "message": f"the trainer was lost {row.attempts} times",
                    }
                    s.add(_event(row, "job failed: " + row.error["message"], "error", row.error))
                    continue
                row.status = "queued"
                s.add(
                    _event(
                        row,
                        "trainer stopped answering; the job is queued again and will resume "
                        "from its last checkpoint",
                        "warn",
                    )
                )
                out.append(row.id)
            s.commit()
        return out

    def claim(self, job_id: str, owner: str, lease_s: float) -> bool:
        now = utcnow()
        with self.sessions() as s:
            result = s.execute(
                update(FineTuneJobRow)
                .where(FineTuneJobRow.id == job_id, FineTuneJobRow.status == "queued")
                .values(
                    status="running",
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                    attempts=FineTuneJobRow.attempts + 1,
                )
            )
            claimed = bool(result.rowcount)  # type: ignore[attr-defined]
            if claimed:
                row = s.get(FineTuneJobRow, job_id)
                assert row is not None
                if row.started_at is None:
                    row.started_at = now
            s.commit()
            return claimed

    def renew(self, job_id: str, owner: str, lease_s: float, progress: dict[str, Any] | None) -> None:
        """Extend the lease; LeaseLost when the job was cancelled, paused or taken over."""
        values: dict[str, Any] = {"lease_expires_at": utcnow() + timedelta(seconds=lease_s)}
        if progress is not None:
            values["progress"] = progress
        with self.sessions() as s:
            result = s.execute(
                update(FineTuneJobRow)
                .where(
                    FineTuneJobRow.id == job_id,
                    FineTuneJobRow.status == "running",
                    FineTuneJobRow.lease_owner == owner,
                )
                .values(**values)
            )
            s.commit()
            if not result.rowcount:  # type: ignore[attr-defined]
                raise LeaseLost(job_id)

    def hand_back(self, job_id: str, owner: str, message: str) -> bool:
        """A stopping trainer returns its job to the queue (it resumes from its last checkpoint)."""
        with self.sessions() as s:
            try:
                row = _owned(s, job_id, owner)
            except LeaseLost:
                return False
            row.status, row.lease_owner, row.lease_expires_at = "queued", None, None
            s.add(_event(row, message, "warn"))
            s.commit()
            return True

    def latest_checkpoint(self, job_id: str) -> CheckpointRow | None:
        with self.sessions() as s:
            q = select(CheckpointRow).where(CheckpointRow.job_id == job_id)
            return s.scalar(q.order_by(CheckpointRow.epoch.desc()).limit(1))

    def record_epoch(self, job_id: str, owner: str, rec: EpochRecord) -> None:
        """An epoch's step metrics, validation metrics and checkpoint, in one transaction."""
        with self.sessions() as s:
            row = _owned(s, job_id, owner)
            last = rec.train[-1] if rec.train else {}
            row.progress = {**(row.progress or {}), **last, "step": rec.step, "epoch": rec.epoch, **rec.valid}
            for m in rec.train:
                s.add(_metric(row, "train", m["step"], rec.epoch, m))
            s.add(_metric(row, "valid", rec.step, rec.epoch, rec.valid))
            s.add(
                CheckpointRow(
                    job_id=row.id,
                    tenant_id=row.tenant_id,
                    epoch=rec.epoch,
                    step_number=rec.step,
                    sha256=rec.checkpoint_sha256,
                    metrics={**rec.valid, "train_loss": rec.train[-1]["train_loss"] if rec.train else None},
                )
            )
            s.add(
                _event(row, f"epoch {rec.epoch} done", "info", {"epoch": rec.epoch, **rec.valid}, "metrics")
            )
            s.commit()

    def finish(
        self,
        job_id: str,
        owner: str,
        status: str,
        *,
        fine_tuned_model: str | None = None,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        message: str,
    ) -> None:
        with self.sessions() as s:
            row = _owned(s, job_id, owner)
            row.status = status
            row.fine_tuned_model = fine_tuned_model
            row.result, row.error = result, error
            row.finished_at = utcnow()
            row.lease_owner, row.lease_expires_at = None, None
            s.add(_event(row, message, "error" if status == "failed" else "info", error or result))
            s.commit()

    def name_late_version(self, job_id: str, fine_tuned_model: str, result: dict[str, Any]) -> bool:
        """A job cancelled (or pruned) while its trainer registered its version: the job names that
        version (it serves, and no job would name it otherwise) and stays cancelled. False when
        the job is not cancelled or already names a version."""
        with self.sessions() as s:
            row = s.scalar(select(FineTuneJobRow).where(FineTuneJobRow.id == job_id).with_for_update())
            if row is None or row.status != "cancelled" or row.fine_tuned_model is not None:
                return False
            row.fine_tuned_model, row.result = fine_tuned_model, result
            message = (
                f"cancelled after its version {fine_tuned_model} was registered: "
                "the version stays and serves (delete it if it is not wanted)"
            )
            s.add(_event(row, message, "warn", {"fine_tuned_model": fine_tuned_model}))
            s.commit()
            return True


def _job(
    s: Session, tenant_id: int, job_id: str, *, lock: bool = False, kind: str = FINE_TUNE
) -> FineTuneJobRow:
    q = select(FineTuneJobRow).where(FineTuneJobRow.id == job_id, FineTuneJobRow.tenant_id == tenant_id)
    q = q.where(FineTuneJobRow.kind == kind)
    row = s.scalar(q.with_for_update() if lock else q)
    if row is None:
        raise NotFound(f"{'fine-tuning' if kind == FINE_TUNE else kind} job {job_id!r} not found")
    return row


def _owned(s: Session, job_id: str, owner: str) -> FineTuneJobRow:
    row = s.scalar(select(FineTuneJobRow).where(FineTuneJobRow.id == job_id).with_for_update())
    if row is None or row.status != "running" or row.lease_owner != owner:
        raise LeaseLost(job_id)
    return row


def _event(
    row: FineTuneJobRow,
    message: str,
    level: str = "info",
    data: dict[str, Any] | None = None,
    type_: str = "message",
) -> JobEventRow:
    return JobEventRow(
        job_id=row.id, tenant_id=row.tenant_id, level=level, type=type_, message=message, data=data
    )


def _metric(row: FineTuneJobRow, kind: str, step: int, epoch: int, values: dict[str, Any]) -> JobMetricRow:
    return JobMetricRow(
        job_id=row.id, tenant_id=row.tenant_id, kind=kind, step=step, epoch=epoch, values=values
    )


def unix(ts: datetime | None) -> int | None:
    return int(ts.timestamp()) if ts is not None else None
