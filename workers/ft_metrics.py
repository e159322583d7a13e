"""Trainer metrics (Prometheus). Hooks never raise: a metrics problem never fails a job."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("kiln.metrics")
_EPOCH = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.steps = Counter("kiln_trainer_steps", "Optimizer steps taken", registry=r)
        self.epochs = Histogram(
            "kiln_trainer_epoch_duration_seconds", "Wall time per epoch", buckets=_EPOCH, registry=r
        )
        self.jobs = Counter("kiln_trainer_jobs", "Job runs ended, by outcome", ("outcome",), registry=r)
        self.busy = Gauge("kiln_trainer_busy", "1 while this trainer runs a job", registry=r)
        self.train_loss = Gauge("kiln_trainer_train_loss", "Last step's training loss", registry=r)

    def step(self, loss: float) -> None:
        try:
            self.steps.inc()
            self.train_loss.set(loss)
        except Exception:  # pragma: no cover - never let metrics break training
            log.exception("metrics hook failed")

    def epoch(self, seconds: float) -> None:
        try:
            self.epochs.observe(seconds)
        except Exception:  # pragma: no cover
            log.exception("metrics hook failed")

    def ended(self, outcome: str) -> None:
        try:
            self.jobs.labels(outcome).inc()
            self.busy.set(0)
        except Exception:  # pragma: no cover
            log.exception("metrics hook failed")
