"""The metrics hooks other features call, and the gateway's and worker's additions."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry

from service import ops_metrics
from service.metrics import FAILURE_REASONS, GatewayMetrics
from workers.metrics import WorkerMetrics


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_ops_hooks_record_and_never_raise() -> None:
    ops_metrics.rate_limited("acme")
    ops_metrics.finetune_jobs({"queued": 2, "running": 1})
    ops_metrics.finetune_job_finished("failed")
    ops_metrics.trainer_step("ftjob-1", 0.2, loss=0.75)
    ops_metrics.trainer_epoch("ftjob-1")
    assert (_value(REGISTRY, "kiln_rate_limited_requests_total", tenant="acme") or 0) >= 1
    assert _value(REGISTRY, "kiln_finetune_jobs", status="queued") == 2
    assert _value(REGISTRY, "kiln_finetune_jobs", status="succeeded") == 0
    assert (_value(REGISTRY, "kiln_finetune_jobs_finished_total", status="failed") or 0) >= 1
    assert _value(REGISTRY, "kiln_trainer_loss", finetune_job="ftjob-1") == 0.75
    assert (_value(REGISTRY, "kiln_trainer_step_seconds_count", finetune_job="ftjob-1") or 0) >= 1
    ops_metrics.trainer_step("ftjob-1", "not a number", loss=None)  # type: ignore[arg-type]


def test_gateway_failure_series_start_at_zero_and_tenants_are_counted() -> None:
    registry = CollectorRegistry()
    m = GatewayMetrics(registry)
    m.ok("m", 1, 0.01, tenant=7)
    for reason in FAILURE_REASONS:
        assert (
            _value(registry, "kiln_inference_request_failure_total", model="m", version="1", reason=reason)
            == 0
        )
    m.failed("m", 1, "invalid_input", tenant=7)
    assert (
        _value(
            registry, "kiln_inference_request_failure_total", model="m", version="1", reason="invalid_input"
        )
        == 1
    )
    assert (
        _value(registry, "kiln_tenant_inference_requests_total", tenant="7", model="m", outcome="success")
        == 1
    )
    assert (
        _value(
            registry, "kiln_tenant_inference_requests_total", tenant="7", model="m", outcome="invalid_input"
        )
        == 1
    )


def test_worker_records_version_memory_and_starts_failures_at_zero() -> None:
    registry = CollectorRegistry()
    m = WorkerMetrics(registry)
    m.version_loaded("m", 3, "cpu", 1234)
    assert _value(registry, "kiln_model_memory_bytes", model="m", version="3", device="cpu") == 1234
    assert (
        _value(registry, "kiln_worker_request_failure_total", model="m", version="3", reason="model_error")
        == 0
    )
    m.version_loaded("m", 4, "cpu", None)
    assert _value(registry, "kiln_model_memory_bytes", model="m", version="4", device="cpu") is None
