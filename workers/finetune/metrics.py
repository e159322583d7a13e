"""Trainer metrics (Prometheus), served by `kiln trainer --metrics-port`. The one definition of
the trainer's metric names (deploy/grafana/dashboards.py and deploy/prometheus/alerts.yml query
them). Hooks never raise: a metrics problem never fails a job.

No series is labelled by job id (that would grow without bound); a job's own curves are in the
database and GET /v1/fine_tuning/jobs/{id}/metrics. Jobs by status are counted by the gateway
(service/ops_metrics.py), from the jobs table, at scrape time.
"""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("kiln.metrics")
_STEP = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_EPOCH = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# how a trainer's run of a job ended (workers/finetune/trainer.py); their series start at 0
OUTCOMES = ("succeeded", "failed", "cancelled", "paused", "lost", "handed_back", "abandoned")


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.steps = Counter("kiln_trainer_steps", "Optimizer steps taken", registry=r)
        self.step_seconds = Histogram(
            "kiln_trainer_step_seconds",
            "Duration of one optimizer step (forward, backward, update)",
            buckets=_STEP,
            registry=r,
        )
        self.loss = Gauge("kiln_trainer_loss", "Training loss of the last step", registry=r)
        self.epochs = Histogram(
            "kiln_trainer_epoch_duration_seconds",
            "Wall time per epoch (steps and validation)",
            buckets=_EPOCH,
            registry=r,
        )
        self.jobs = Counter(
            "kiln_trainer_jobs", "Job runs ended on this trainer, by outcome", ("outcome",), registry=r
        )
        for outcome in OUTCOMES:
            self.jobs.labels(outcome)
        self.busy = Gauge("kiln_trainer_busy", "1 while this trainer runs a job", registry=r)

    def step(self, loss: float, seconds: float | None = None) -> None:
        try:
            self.steps.inc()
            self.loss.set(loss)
            if seconds is not None:
                self.step_seconds.observe(seconds)
        except Exception:  # never let metrics break training
            log.exception("metrics hook failed")

    def epoch(self, seconds: float) -> None:
        try:
            self.epochs.observe(seconds)
        except Exception:
            log.exception("metrics hook failed")

    def started(self) -> None:
        try:
            self.busy.set(1)
        except Exception:  # pragma: no cover
            log.exception("metrics hook failed")

    def ended(self, outcome: str) -> None:
        try:
            self.jobs.labels(outcome).inc()
            self.busy.set(0)
        except Exception:
            log.exception("metrics hook failed")
