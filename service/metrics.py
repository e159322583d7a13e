"""Gateway metrics. Hooks never raise. With several gateway processes, set
PROMETHEUS_MULTIPROC_DIR (`kiln gateway --workers N` does) and /metrics aggregates them.

/metrics carries tenant ids and model names, so it is served on the operators' port only
(`kiln gateway --metrics-port`, KILN_METRICS_PORT), never on the public API port."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from workers.contract.usage import TenantLabels

log = logging.getLogger("kiln.metrics")
# the reasons the gateway records (service/errors.py codes); their series start at 0
FAILURE_REASONS = ("invalid_input", "deadline_exceeded", "model_error", "unavailable", "rate_limited")
_LAT = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        labels = ("model", "version")
        self.success = Counter(
            "kiln_inference_request_success", "Inference requests answered", labels, registry=r
        )
        self.failure = Counter(
            "kiln_inference_request_failure", "Inference requests failed", (*labels, "reason"), registry=r
        )
        self.duration = Histogram(
            "kiln_inference_request_duration_seconds",
            "End-to-end inference latency at the gateway",
            labels,
            buckets=_LAT,
            registry=r,
        )
        self.pending = Gauge(
            "kiln_inference_pending_request_count",
            "Requests waiting for a reply",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tenant_requests = Counter(
            "kiln_tenant_inference_requests",
            "Inference requests by tenant, model and outcome (success or the failure reason)",
            ("tenant", "model", "outcome"),
            registry=r,
        )
        # bounded: past `limit` tenants (KILN_METRICS_MAX_TENANTS) the label is "other"
        self.tenant_labels = TenantLabels(100)
        self._seen: set[tuple[str, str]] = set()

    def _first_seen(self, model: str, version: str) -> None:
        """Create the failure series at 0 so rates and ratios exist before the first failure."""
        if (model, version) in self._seen:
            return
        self._seen.add((model, version))
        for reason in FAILURE_REASONS:
            self.failure.labels(model, version, reason)

    def ok(self, model: str, version: int, seconds: float, tenant: int | str | None = None) -> None:
        try:
            self._first_seen(model, str(version))
            self.success.labels(model, str(version)).inc()
            self.duration.labels(model, str(version)).observe(seconds)
            if tenant is not None:
                self.tenant_requests.labels(self.tenant_labels(tenant), model, "success").inc()
        except Exception:
            log.exception("metrics hook failed")

    def failed(self, model: str, version: int, reason: str, tenant: int | str | None = None) -> None:
        try:
            self._first_seen(model, str(version))
            self.failure.labels(model, str(version), reason).inc()
            if tenant is not None:
                self.tenant_requests.labels(self.tenant_labels(tenant), model, reason).inc()
        except Exception:
            log.exception("metrics hook failed")


class _Default:
    """This process's default registry, as one collector of another registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def serve(host: str, port: int, *extra: Collector) -> int:
    """Serve /metrics (what `render` gives) on its own listener, in a thread of this process:
    the operators' port (KILN_METRICS_PORT), never the public one. In the parent of several
    gateway processes it aggregates them (PROMETHEUS_MULTIPROC_DIR). Returns the port bound
    (`port` 0: one the system picks); OSError when it cannot listen there."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Default())
    for collector in extra:
        registry.register(collector)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_address[1])


def render(*extra: Collector) -> tuple[bytes, str]:
    """This process's metrics (or all gateway processes' in multiprocess mode), then the extra
    collectors, each collected once here: values computed at scrape time (jobs by status, from
    the database) come once per scrape, whichever gateway process answers it."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    body = generate_latest(registry)
    if extra:
        scrape_time = CollectorRegistry()
        for collector in extra:
            scrape_time.register(collector)
        body += generate_latest(scrape_time)
    return body, CONTENT_TYPE_LATEST
