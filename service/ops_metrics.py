"""Metrics of the features around the inference path: rate limiting, fine-tune jobs and the
trainer. One place defines their names (the dashboards and alert rules in deploy/ use them);
the features call these hooks. Hooks never raise. Collectors are created on first use, in the
default registry (or the multiprocess directory when PROMETHEUS_MULTIPROC_DIR is set).

    from service import ops_metrics
    ops_metrics.rate_limited(tenant="acme")
    ops_metrics.finetune_job_finished("failed")
    ops_metrics.finetune_jobs({"queued": 2, "running": 1})
    ops_metrics.trainer_step(job="ftjob-abc", seconds=0.12, loss=0.53)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import cache

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("kiln.metrics")

FINETUNE_STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")
_STEP = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class OpsMetrics:
    def __init__(self) -> None:
        self.rate_limited = Counter(
            "kiln_rate_limited_requests", "Requests rejected by a tenant's rate limit or quota", ("tenant",)
        )
        self.finetune_jobs = Gauge(
            "kiln_finetune_jobs",
            "Fine-tune jobs by status (as last counted)",
            ("status",),
            multiprocess_mode="mostrecent",
        )
        self.finetune_finished = Counter(
            "kiln_finetune_jobs_finished", "Fine-tune jobs that reached a final status", ("status",)
        )
        self.trainer_step = Histogram(
            "kiln_trainer_step_seconds", "Duration of one optimiser step", ("finetune_job",), buckets=_STEP
        )
        self.trainer_loss = Gauge(
            "kiln_trainer_loss",
            "Latest training loss",
            ("finetune_job",),
            multiprocess_mode="mostrecent",
        )
        self.trainer_epochs = Counter("kiln_trainer_epochs", "Training epochs completed", ("finetune_job",))


@cache
def ops() -> OpsMetrics:
    return OpsMetrics()


def rate_limited(tenant: str | int) -> None:
    try:
        ops().rate_limited.labels(str(tenant)).inc()
    except Exception:
        log.exception("metrics hook failed")


def finetune_jobs(counts: Mapping[str, int]) -> None:
    """Set the number of jobs in each status (statuses not given are set to 0)."""
    try:
        gauge = ops().finetune_jobs
        for status in {*FINETUNE_STATUSES, *counts}:
            gauge.labels(status).set(counts.get(status, 0))
    except Exception:
        log.exception("metrics hook failed")


def finetune_job_finished(status: str) -> None:
    try:
        ops().finetune_finished.labels(status).inc()
    except Exception:
        log.exception("metrics hook failed")


def trainer_step(job: str, seconds: float, loss: float | None = None) -> None:
    try:
        m = ops()
        m.trainer_step.labels(job).observe(seconds)
        if loss is not None:
            m.trainer_loss.labels(job).set(loss)
    except Exception:
        log.exception("metrics hook failed")


def trainer_epoch(job: str) -> None:
    try:
        ops().trainer_epochs.labels(job).inc()
    except Exception:
        log.exception("metrics hook failed")
