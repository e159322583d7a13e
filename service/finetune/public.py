"""The public shapes of fine-tuning rows (OpenAI's file, job, event and checkpoint objects)."""

from __future__ import annotations

from model_store.db import CheckpointRow, FileRow, FineTuneJobRow, JobEventRow, JobMetricRow
from model_store.jobs import unix
from service.errors import Unprocessable
from service.finetune.openai_compat import estimated_finish, method, public_hyperparameters
from service.finetune.schemas import (
    CheckpointPublic,
    EventPublic,
    FilePublic,
    JobPublic,
    MetricsPublic,
)
from workers.contract.finetune_spec import JobSpec, chosen_metric


def file_public(row: FileRow) -> FilePublic:
    return FilePublic(
        id=row.id,
        bytes=row.size_bytes,
        created_at=unix(row.created_at) or 0,
        filename=row.filename,
        purpose=row.purpose,
        format=row.format,
        sha256=row.sha256,
        stats=row.stats,
    )


def job_public(row: FineTuneJobRow) -> JobPublic:
    spec = JobSpec.model_validate(row.spec)
    return JobPublic(
        id=row.id,
        created_at=unix(row.created_at) or 0,
        started_at=unix(row.started_at),
        finished_at=unix(row.finished_at),
        model=row.model,
        fine_tuned_model=row.fine_tuned_model,
        status=row.status,
        error=row.error,
        task=spec.task,
        hyperparameters=public_hyperparameters(spec.hyperparameters),
        method=method(spec.hyperparameters),
        promote_metric=chosen_metric(spec.task, spec.promote_metric),
        trained_tokens=(row.result or {}).get("trained_tokens"),
        estimated_finish=estimated_finish(row),
        organization_id=f"tenant-{row.tenant_id}",
        training_file=row.training_file,
        validation_file=row.validation_file,
        validation_split=spec.validation_split,
        seed=row.seed,
        metadata=spec.metadata,
        promote=spec.promote,
        resources=spec.resources.model_dump(mode="json"),
        progress=row.progress,
        result=row.result,
        result_files=list((row.result or {}).get("result_files", [])),
        sweep_id=row.sweep_id,
        sweep_trial=row.sweep_trial,
    )


def event_public(row: JobEventRow) -> EventPublic:
    return EventPublic(
        id=f"ftevent-{row.id}",
        created_at=unix(row.created_at) or 0,
        level=row.level,
        message=row.message,
        type=row.type,
        data=row.data,
    )


def checkpoint_public(row: CheckpointRow) -> CheckpointPublic:
    return CheckpointPublic(
        id=f"ftckpt-{row.id}",
        created_at=unix(row.created_at) or 0,
        fine_tuning_job_id=row.job_id,
        epoch=row.epoch,
        step_number=row.step_number,
        sha256=row.sha256,
        metrics=row.metrics,
    )


def metrics_public(rows: list[JobMetricRow]) -> MetricsPublic:
    train = [{**r.values, "step": r.step, "epoch": r.epoch} for r in rows if r.kind == "train"]
    valid = [{**r.values, "step": r.step, "epoch": r.epoch} for r in rows if r.kind == "valid"]
    return MetricsPublic(train=train, valid=valid)


def parse_event_after(after: str | None) -> int:
    if not after:
        return 0
    raw = after.removeprefix("ftevent-")
    if not raw.isdigit():
        raise Unprocessable("after must be an event id")
    return int(raw)
