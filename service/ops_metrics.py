"""Gateway metrics of the features around the inference path: rate limiting (a hook the admission
code calls) and fine-tune jobs by status (counted from the jobs table when /metrics is scraped).
The trainer's own metrics are in workers/finetune/metrics.py (served by `kiln trainer --metrics-port`).
Hooks never raise.

    from service import ops_metrics
    ops_metrics.rate_limited(tenant="acme")
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import cache

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from model_store.db import FineTuneJobRow
from model_store.jobs import ACTIVE, TERMINAL
from workers.contract.usage import TenantLabels

log = logging.getLogger("kiln.metrics")

FINETUNE_STATUSES = (*ACTIVE, *TERMINAL)
FINETUNE_JOBS = "kiln_finetune_jobs"
_FINETUNE_HELP = "Fine-tune jobs by status (all tenants), counted from the database at scrape time"


class OpsMetrics:
    def __init__(self) -> None:
        self.rate_limited = Counter(
            "kiln_rate_limited_requests",
            "Requests refused (429) by a key's or tenant's rate limit, concurrency limit or quota",
            ("tenant",),
        )


# bounded: past KILN_METRICS_MAX_TENANTS tenants the label is "other" (as for
# kiln_tenant_inference_requests_total, so the two can be divided); the app factory sets the limit
TENANT_LABELS = TenantLabels(100)


@cache
def ops() -> OpsMetrics:
    """Created on first use, in the default registry (or the multiprocess directory when
    PROMETHEUS_MULTIPROC_DIR is set)."""
    return OpsMetrics()


def rate_limited(tenant: str | int) -> None:
    try:
        ops().rate_limited.labels(TENANT_LABELS(tenant)).inc()
    except Exception:
        log.exception("metrics hook failed")


class FineTuneJobsCollector:
    """kiln_finetune_jobs{status}: one GROUP BY on the (status-indexed) jobs table per collect.
    Every known status is present (0 when no job has it). If the database cannot answer, the
    family has no samples (a gap, not a wrong number) and the scrape still succeeds.

    It is registered in no global registry: the gateway's /metrics renders it once per scrape
    (service/metrics.render), so with several gateway processes it is neither written to the
    multiprocess directory nor counted once per process."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def counts(self) -> dict[str, int] | None:
        try:
            with self.sessions() as s:
                rows = s.execute(
                    select(FineTuneJobRow.status, func.count()).group_by(FineTuneJobRow.status)
                ).all()
        except Exception as exc:
            log.warning("could not count fine-tune jobs for /metrics: %s", type(exc).__name__)
            return None
        return {str(status): int(n) for status, n in rows}

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(FINETUNE_JOBS, _FINETUNE_HELP, labels=["status"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(FINETUNE_JOBS, _FINETUNE_HELP, labels=["status"])
        counts = self.counts()
        if counts is not None:
            for status in sorted({*FINETUNE_STATUSES, *counts}):
                family.add_metric([status], counts.get(status, 0))
        yield family
