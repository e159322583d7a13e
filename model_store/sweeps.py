"""Hyperparameter sweeps in the database: the sweep row and its trials (fine-tune jobs).

Every query is scoped to a tenant on the API side. A trial is a fine-tune job with `sweep_id` and
`sweep_trial` set, unique together: two advancers that race to create the same trial make one job
(the loser's insert fails and it rereads). The search state is never stored apart from the jobs,
so a trainer killed at any point loses no trial.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from model_store.db import (
    FineTuneJobRow,
    IdempotencyKeyRow,
    JobEventRow,
    JobMetricRow,
    SweepRow,
    utcnow,
)
from model_store.errors import Conflict, NotFound
from model_store.jobs import ACTIVE, TERMINAL

SWEEP_ACTIVE = ("queued", "running")


class SweepStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    # API side ------------------------------------------------------------------------------------
    def create(self, row: SweepRow, idem: tuple[int, str] | None) -> None:
        with self.sessions() as s:
            s.add(row)
            if idem is not None:
                key = s.get(IdempotencyKeyRow, idem)
                if key is not None:
                    key.job_id = row.id
            s.commit()

    def get(self, tenant_id: int, sweep_id: str) -> SweepRow:
        with self.sessions() as s:
            return _sweep(s, tenant_id, sweep_id)

    def page(self, tenant_id: int, after: str | None, limit: int) -> tuple[list[SweepRow], bool]:
        with self.sessions() as s:
            q = select(SweepRow).where(SweepRow.tenant_id == tenant_id)
            if after:
                anchor = _sweep(s, tenant_id, after)
                q = q.where(
                    (SweepRow.created_at < anchor.created_at)
                    | ((SweepRow.created_at == anchor.created_at) & (SweepRow.id < anchor.id))
                )
            q = q.order_by(SweepRow.created_at.desc(), SweepRow.id.desc()).limit(limit + 1)
            rows = list(s.scalars(q))
            return rows[:limit], len(rows) > limit

    def trials_of(self, tenant_id: int, sweep_id: str) -> tuple[SweepRow, list[FineTuneJobRow]]:
        with self.sessions() as s:
            return _sweep(s, tenant_id, sweep_id), _trials(s, sweep_id)

    def cancel(self, tenant_id: int, sweep_id: str) -> SweepRow:
        """Cancel the sweep and every trial not finished, in one transaction."""
        with self.sessions() as s:
            row = _sweep(s, tenant_id, sweep_id, lock=True)
            if row.status not in SWEEP_ACTIVE:
                raise Conflict(f"sweep is {row.status}; cannot cancel it")
            now = utcnow()
            row.status, row.finished_at = "cancelled", now
            for job in _trials(s, sweep_id, lock=True):
                if job.status in ACTIVE:
                    job.status, job.finished_at = "cancelled", now
                    job.lease_owner, job.lease_expires_at = None, None
                    s.add(_event(job, "job cancelled with its sweep"))
            s.commit()
            return row

    def request_promotion(self, tenant_id: int, sweep_id: str, alias: str) -> SweepRow:
        """Ask the trainers to promote a finished sweep's best trial to `alias`."""
        with self.sessions() as s:
            row = _sweep(s, tenant_id, sweep_id, lock=True)
            if row.status != "succeeded":
                raise Conflict(f"sweep is {row.status}; only a succeeded sweep can be promoted")
            spec = dict(row.spec)
            spec["promote"] = alias
            row.spec = spec
            row.result = {k: v for k, v in (row.result or {}).items() if k != "promotion"}
            s.commit()
            return row

    # trainer side --------------------------------------------------------------------------------
    def pending_ids(self) -> list[str]:
        """Sweeps an advancer has work on: active ones, and finished ones with a promotion to do."""
        with self.sessions() as s:
            q = select(SweepRow).where(SweepRow.status.in_((*SWEEP_ACTIVE, "succeeded")))
            out = []
            for row in s.scalars(q.order_by(SweepRow.created_at)):
                if row.status in SWEEP_ACTIVE or _promotion_due(row):
                    out.append(row.id)
            return out

    def load(self, sweep_id: str) -> tuple[SweepRow, list[FineTuneJobRow]] | None:
        with self.sessions() as s:
            row = s.get(SweepRow, sweep_id)
            return None if row is None else (row, _trials(s, sweep_id))

    def add_trials(self, sweep_id: str, jobs: list[FineTuneJobRow]) -> bool:
        """Insert new trials if the sweep is still active; False when another advancer made
        them first (the unique trial number) or the sweep ended meanwhile."""
        with self.sessions() as s:
            row = s.scalar(select(SweepRow).where(SweepRow.id == sweep_id).with_for_update())
            if row is None or row.status not in SWEEP_ACTIVE:
                return False
            row.status = "running"
            try:
                for job in jobs:
                    s.add(job)
                    s.flush()
                    s.add(_event(job, f"trial {job.sweep_trial} of sweep {sweep_id}: queued", data=_hp(job)))
                s.commit()
            except IntegrityError:
                s.rollback()
                return False
            return True

    def prune(self, job_id: str, message: str, data: dict[str, Any]) -> bool:
        """Stop a trial the pruner gave up on: cancelled, with error code `pruned`. Not once it has
        recorded its last epoch: pruning saves nothing then, and its trainer is registering its
        version (a pruned trial would leave that version serving with no job naming it). The
        trainer records each epoch under the same row lock, so the two cannot cross."""
        with self.sessions() as s:
            job = s.scalar(select(FineTuneJobRow).where(FineTuneJobRow.id == job_id).with_for_update())
            if job is None or job.status not in ACTIVE or _trained_out(s, job):
                return False
            job.status, job.finished_at = "cancelled", utcnow()
            job.lease_owner, job.lease_expires_at = None, None
            job.error = {"code": "pruned", "message": message}
            s.add(_event(job, message, "warn", data))
            s.commit()
            return True

    def finish(
        self, sweep_id: str, status: str, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> bool:
        with self.sessions() as s:
            row = s.scalar(select(SweepRow).where(SweepRow.id == sweep_id).with_for_update())
            if row is None or row.status not in SWEEP_ACTIVE:
                return False
            row.status, row.result, row.error, row.finished_at = status, result, error, utcnow()
            s.commit()
            return True

    def set_promotion(self, sweep_id: str, promotion: dict[str, Any]) -> None:
        with self.sessions() as s:
            row = s.scalar(select(SweepRow).where(SweepRow.id == sweep_id).with_for_update())
            if row is not None and row.status == "succeeded":
                row.result = {**(row.result or {}), "promotion": promotion}
                s.commit()


def last_epoch(job_spec: dict[str, Any], valid: Iterable[tuple[int, Mapping[str, Any]]]) -> int | None:
    """The epoch a trial's training ends at, from its validation metrics by epoch: the one early
    stopping stopped it at, else its epoch budget (None: not known)."""
    stopped = [epoch for epoch, values in valid if values.get("stopped_early")]
    if stopped:
        return min(stopped)
    epochs = (job_spec.get("hyperparameters") or {}).get("epochs")
    return epochs if isinstance(epochs, int) else None


def _trained_out(s: Session, job: FineTuneJobRow) -> bool:
    """Has the trial recorded the validation metrics of its last epoch?"""
    q = select(JobMetricRow.epoch, JobMetricRow.values).where(
        JobMetricRow.job_id == job.id, JobMetricRow.kind == "valid"
    )
    valid = [(epoch, values) for epoch, values in s.execute(q)]
    end = last_epoch(job.spec, valid)
    return bool(valid) and end is not None and max(epoch for epoch, _ in valid) >= end


def _promotion_due(row: SweepRow) -> bool:
    result = row.result or {}
    return bool(row.spec.get("promote")) and "promotion" not in result and bool(result.get("best_trial"))


def _sweep(s: Session, tenant_id: int, sweep_id: str, *, lock: bool = False) -> SweepRow:
    q = select(SweepRow).where(SweepRow.id == sweep_id, SweepRow.tenant_id == tenant_id)
    row = s.scalar(q.with_for_update() if lock else q)
    if row is None:
        raise NotFound(f"sweep {sweep_id!r} not found")
    return row


def _trials(s: Session, sweep_id: str, *, lock: bool = False) -> list[FineTuneJobRow]:
    q = select(FineTuneJobRow).where(FineTuneJobRow.sweep_id == sweep_id).order_by(FineTuneJobRow.sweep_trial)
    return list(s.scalars(q.with_for_update() if lock else q))


def _hp(job: FineTuneJobRow) -> dict[str, Any]:
    return {"hyperparameters": job.spec.get("hyperparameters", {})}


def _event(
    job: FineTuneJobRow, message: str, level: str = "info", data: dict[str, Any] | None = None
) -> JobEventRow:
    return JobEventRow(
        job_id=job.id, tenant_id=job.tenant_id, level=level, type="message", message=message, data=data
    )


__all__ = ["SWEEP_ACTIVE", "TERMINAL", "SweepStore", "last_epoch"]
