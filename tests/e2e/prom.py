"""A real Prometheus server for tests: Debian's `prometheus` binary on a free port, with a
temporary configuration and data directory; its process group is killed at the end."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.e2e.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def binary(name: str) -> str | None:
    return shutil.which(name)


def missing(name: str) -> bool:
    """Skip without the binary on a developer's machine; in CI (CI=true, after `make test`
    installed it) a missing binary fails the test instead of skipping it."""
    return binary(name) is None and not os.environ.get("CI")


class Prometheus:
    def __init__(self, tmp: Path, targets: dict[str, list[str]], rule_files: list[Path]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addrs}]} for job, addrs in targets.items()
            ],
        }
        self.config_path = tmp / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / "prometheus.log"
        self._log = self.log_path.open("wb")
        prom = binary("prometheus")
        assert prom is not None
        self.popen = subprocess.Popen(
            [
                prom,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"prometheus exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready:\n{self.log()}")

    def query(self, expr: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body: dict[str, Any] = r.json()
        return body

    def label_values(self, label: str, metric: str) -> list[str]:
        r = httpx.get(f"{self.url}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=10)
        r.raise_for_status()
        return list(r.json()["data"])

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()


# Grafana variables in the dashboards' queries, replaced the way Grafana would for "All"
_GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def grafana_to_promql(expr: str, variables: list[str]) -> str:
    for k, v in _GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    for name in variables:
        expr = re.sub(rf"\$\{{?{name}\}}?\b", ".*", expr)
    assert "$" not in expr, f"unreplaced variable in {expr!r}"
    return expr


def dashboards() -> list[dict[str, Any]]:
    import json

    return [json.loads(p.read_text()) for p in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))]


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) for every target of every panel."""
    out = []
    for board in dashboards():
        names = [v["name"] for v in board["templating"]["list"]]
        for panel in board["panels"]:
            for target in panel["targets"]:
                out.append((board["uid"], panel["title"], grafana_to_promql(target["expr"], names)))
    return out


def variable_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard uid, variable, label, metric) for every label_values() variable."""
    out = []
    for board in dashboards():
        for var in board["templating"]["list"]:
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
            assert m, f"{board['uid']}: variable {var['name']} is not label_values(metric, label)"
            out.append((board["uid"], var["name"], m.group(2), m.group(1)))
    return out


def alert_rules() -> list[tuple[str, str]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [(r.get("alert") or r["record"], r["expr"]) for g in doc["groups"] for r in g["rules"]]
