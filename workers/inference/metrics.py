"""Worker metrics, named after Triton's vocabulary (nv_* -> kiln_*). Hooks never raise."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from workers.contract.usage import Charge, TenantLabels

log = logging.getLogger("kiln.metrics")

WORKER_FAILURE_REASONS = ("model_error",)
_LAT = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY, max_tenant_labels: int = 100) -> None:
        r = registry
        labels = ("model", "version")
        self.inference_count = Counter(
            "kiln_inference_count", "Items inferred (rows along the batch dimension)", labels, registry=r
        )
        self.exec_count = Counter(
            "kiln_inference_exec_count",
            "Model executions (batches); count/exec_count = mean batch",
            labels,
            registry=r,
        )
        self.batch_size = Histogram(
            "kiln_batch_size", "Items per executed batch", labels, buckets=_BATCH, registry=r
        )
        self.requests_per_batch = Histogram(
            "kiln_batch_requests", "Requests per executed batch", labels, buckets=_BATCH, registry=r
        )
        self.queue_duration = Histogram(
            "kiln_inference_queue_duration_seconds",
            "Enqueue to start of compute",
            labels,
            buckets=_LAT,
            registry=r,
        )
        self.compute_duration = Histogram(
            "kiln_inference_compute_infer_duration_seconds",
            "Model execution time per batch",
            labels,
            buckets=_LAT,
            registry=r,
        )
        self.failures = Counter(
            "kiln_worker_request_failure", "Requests failed on the worker", (*labels, "reason"), registry=r
        )
        self.dead_lettered = Counter(
            "kiln_dead_lettered_requests", "Requests moved to the dead-letter stream", registry=r
        )
        self.claimed = Counter("kiln_claimed_entries", "Entries taken over from another consumer", registry=r)
        self.load_duration = Histogram(
            "kiln_model_load_duration_seconds",
            "Model load time",
            labels,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.loaded = Gauge("kiln_loaded_versions", "Model versions loaded on this worker", registry=r)
        self.up = Gauge("kiln_worker_up", "1 while the worker loop runs", registry=r)
        self.model_memory = Gauge(
            "kiln_model_memory_bytes",
            "Memory a loaded version took at load (device memory on CUDA, resident memory on CPU)",
            (*labels, "device"),
            registry=r,
        )
        self._tenant_metrics(r, max_tenant_labels)

    def _tenant_metrics(self, r: CollectorRegistry, max_tenant_labels: int) -> None:
        self.tenant_labels = TenantLabels(max_tenant_labels)
        self.tenant_compute = Counter(
            "kiln_tenant_compute_seconds",
            "Compute seconds charged to a tenant (tenants past the label limit fold into 'other')",
            ("tenant",),
            registry=r,
        )
        self.tenant_items = Counter("kiln_tenant_inference_count", "Items inferred", ("tenant",), registry=r)

    def version_loaded(self, model: str, version: int, device: str, memory_bytes: int | None) -> None:
        """A version is loaded: its failure series start at 0, its memory is recorded."""
        try:
            lv = (model, str(version))
            for reason in WORKER_FAILURE_REASONS:
                self.failures.labels(*lv, reason)
            if memory_bytes is not None:
                self.model_memory.labels(*lv, device).set(max(memory_bytes, 0))
        except Exception:
            log.exception("metrics hook failed")

    def batch(
        self, model: str, version: int, items: int, requests: int, compute_s: float, queue_s: list[float]
    ) -> None:
        try:
            lv = (model, str(version))
            self.inference_count.labels(*lv).inc(items)
            self.exec_count.labels(*lv).inc()
            self.batch_size.labels(*lv).observe(items)
            self.requests_per_batch.labels(*lv).observe(requests)
            self.compute_duration.labels(*lv).observe(compute_s)
            for q in queue_s:
                self.queue_duration.labels(*lv).observe(q)
        except Exception:  # metrics never break a request
            log.exception("metrics hook failed")

    def failure(self, model: str, version: int, reason: str, n: int = 1) -> None:
        try:
            self.failures.labels(model, str(version), reason).inc(n)
        except Exception:
            log.exception("metrics hook failed")

    def charge(self, charges: list[Charge]) -> None:
        try:
            for c in charges:
                label = self.tenant_labels(c.tenant_id)
                self.tenant_compute.labels(label).inc(c.compute_s)
                self.tenant_items.labels(label).inc(c.items)
        except Exception:
            log.exception("metrics hook failed")
