"""The metrics hooks other features call, the trainer's metrics, the gateway's scrape-time
collectors, and the gateway's and worker's additions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from model_store.db import make_db_engine, make_sessionmaker
from service import metrics, ops_metrics
from service.metrics import FAILURE_REASONS, GatewayMetrics
from service.ops_metrics import FineTuneJobsCollector
from workers.finetune.metrics import OUTCOMES, TrainerMetrics
from workers.inference.metrics import WorkerMetrics


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_rate_limited_hook_records_and_never_raises() -> None:
    ops_metrics.rate_limited("acme")
    assert (_value(REGISTRY, "kiln_rate_limited_requests_total", tenant="acme") or 0) >= 1
    ops_metrics.rate_limited(object())  # type: ignore[arg-type]


def test_trainer_metrics_record_steps_epochs_and_outcomes() -> None:
    registry = CollectorRegistry()
    m = TrainerMetrics(registry)
    for outcome in OUTCOMES:  # the series exist at 0 before the first job ends
        assert _value(registry, "kiln_trainer_jobs_total", outcome=outcome) == 0
    m.started()
    assert _value(registry, "kiln_trainer_busy") == 1
    m.step(0.75, 0.2)
    m.step(0.5, 0.3)
    m.epoch(1.5)
    m.ended("failed")
    assert _value(registry, "kiln_trainer_steps_total") == 2
    assert _value(registry, "kiln_trainer_loss") == 0.5
    assert _value(registry, "kiln_trainer_step_seconds_count") == 2
    assert _value(registry, "kiln_trainer_step_seconds_sum") == 0.5
    assert _value(registry, "kiln_trainer_epoch_duration_seconds_count") == 1
    assert _value(registry, "kiln_trainer_jobs_total", outcome="failed") == 1
    assert _value(registry, "kiln_trainer_busy") == 0
    m.step("not a number", "nor this")  # type: ignore[arg-type]
    m.epoch("nope")  # type: ignore[arg-type]


class _Fixed:
    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kiln_test_fixed", "a scrape-time value", labels=["status"])
        family.add_metric(["queued"], 3)
        yield family


@pytest.mark.parametrize("multiprocess", [False, True])
def test_scrape_time_collectors_are_rendered_once(
    multiprocess: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if multiprocess:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    else:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    body, _ = metrics.render(_Fixed())
    assert body.decode().count('kiln_test_fixed{status="queued"} 3.0') == 1


def test_jobs_collector_never_raises_when_the_database_is_down() -> None:
    db_engine = make_db_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    try:
        collector = FineTuneJobsCollector(make_sessionmaker(db_engine))
        assert collector.counts() is None
        families = list(collector.collect())
        assert [f.name for f in families] == ["kiln_finetune_jobs"] and families[0].samples == []
        body, _ = metrics.render(collector)
        assert b"kiln_finetune_jobs" in body
    finally:
        db_engine.dispose()


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
