"""deploy/prometheus and deploy/grafana: promtool accepts the config and the rules, the alert
unit tests pass, the dashboards are generated from their source, and every kiln_* metric a
query names is one the code exports."""

from __future__ import annotations

import json
import re
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import sessionmaker

from service.metrics import GatewayMetrics
from service.ops_metrics import FineTuneJobsCollector, OpsMetrics, ops
from tests.e2e import prom
from tests.unit.test_gpu_telemetry import _fake_nvml
from workers.finetune.metrics import TrainerMetrics
from workers.generation.metrics import GenMetrics
from workers.inference.gpu import GpuCollector
from workers.inference.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
PROMDIR = ROOT / "deploy" / "prometheus"
promtool = pytest.mark.skipif(prom.missing("promtool"), reason="promtool missing (make test installs it)")


def _promtool(*args: str) -> None:
    r = subprocess.run(["promtool", *args], cwd=PROMDIR, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@promtool
def test_promtool_check_config() -> None:
    _promtool("check", "config", "prometheus.yml")


@promtool
def test_kubernetes_prometheus_config(tmp_path: Path) -> None:
    """Debian's Prometheus is built without Kubernetes discovery, so promtool checks the rest of
    prometheus-k8s.yml (relabelling, rules) with the discovery swapped for a static target."""
    config = yaml.safe_load((PROMDIR / "prometheus-k8s.yml").read_text())
    for job in config["scrape_configs"]:
        sd = job.pop("kubernetes_sd_configs")
        assert sd[0]["role"] == "pod"
        job["static_configs"] = [{"targets": ["127.0.0.1:9101"]}]
    (tmp_path / "prometheus-k8s.yml").write_text(yaml.safe_dump(config))
    shutil.copy(PROMDIR / "alerts.yml", tmp_path / "alerts.yml")
    r = subprocess.run(
        ["promtool", "check", "config", "prometheus-k8s.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@promtool
def test_promtool_check_rules() -> None:
    _promtool("check", "rules", "alerts.yml")


@promtool
def test_alert_rules_fire_on_their_unit_test_series() -> None:
    _promtool("test", "rules", "alerts_test.yml")


def test_dashboards_are_generated_from_their_source() -> None:
    source = runpy.run_path(str(ROOT / "deploy" / "grafana" / "dashboards.py"))
    files = source["files"]()
    on_disk = {p.name: p.read_text() for p in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")}
    assert on_disk == files, "run: python deploy/grafana/dashboards.py"
    uids = {json.loads(t)["uid"] for t in files.values()}
    assert uids == {"kiln-overview", "kiln-model", "kiln-gpus", "kiln-tenants", "kiln-finetune"}


def test_grafana_provisioning_points_at_the_dashboards_and_datasource() -> None:
    prov = ROOT / "deploy" / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    uids = {d["uid"] for d in ds}
    for board in prom.dashboards():
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] in uids
            assert all(t["datasource"]["uid"] in uids for t in panel["targets"])
    providers = yaml.safe_load((prov / "dashboards" / "kiln.yml").read_text())["providers"]
    assert providers[0]["options"]["path"] == "/etc/grafana/dashboards"


def _exported_names() -> set[str]:
    names: set[str] = set()
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    WorkerMetrics(registry)
    GenMetrics(registry)
    TrainerMetrics(registry)
    registry.register(GpuCollector(_fake_nvml(1)))
    ops()  # the ops metrics live in the default registry
    families = list(registry.collect())
    families.extend(FineTuneJobsCollector(sessionmaker()).describe())  # the gateway's, at scrape time
    ops_obj: OpsMetrics = ops()
    for metric in vars(ops_obj).values():
        families.extend(metric.collect())
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for fam in families:
        names.update(fam.name + s for s in suffixes.get(fam.type, ("",)))
    return names


def test_every_metric_the_dashboards_and_alerts_name_is_exported() -> None:
    exprs = [e for _u, _t, e in prom.panel_queries()] + [e for _n, e in prom.alert_rules()]
    exprs += [m for _u, _v, _l, m in prom.variable_queries()]
    used = {n for e in exprs for n in re.findall(r"\bkiln_[a-z0-9_]+", e)}
    unknown = used - _exported_names()
    assert not unknown, sorted(unknown)
