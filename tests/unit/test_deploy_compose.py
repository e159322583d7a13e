"""docker-compose.yml and deploy/Dockerfile, checked without a Docker engine: the file (raw and
with ${VAR:-default} interpolated as `docker compose config` would) validates against the
compose-spec JSON schema (vendored by check-jsonschema), and the structure does what the
deployment needs."""

from __future__ import annotations

import copy
import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
_VAR = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def _schema() -> dict[str, Any]:
    text = (files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def _interpolate(node: Any) -> Any:
    if isinstance(node, str):
        return _VAR.sub(lambda m: m.group(2) or "", node).replace("$$", "$")
    if isinstance(node, list):
        return [_interpolate(x) for x in node]
    if isinstance(node, dict):
        return {k: _interpolate(v) for k, v in node.items()}
    return node


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def _errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(_schema())
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    assert _errors(compose) == []
    assert _errors(_interpolate(compose)) == []
    broken = copy.deepcopy(compose)  # the schema does reject what is wrong
    broken["services"]["gateway"]["deploy"]["replicaz"] = 2
    broken["services"]["redis"]["healthcheck"]["interval"] = ["5s"]
    assert len(_errors(broken)) >= 2


def test_services_and_what_each_must_have(compose: dict[str, Any]) -> None:
    s = compose["services"]
    assert {"gateway", "worker", "trainer", "redis", "postgres", "prometheus", "grafana"} <= set(s)
    redis_cmd = " ".join(s["redis"]["command"])
    assert "--appendonly yes" in redis_cmd
    # gateway scalable: no fixed host port, no container name; a proxy is the entry point
    assert "ports" not in s["gateway"] and "container_name" not in s["gateway"]
    assert s["gateway"]["deploy"]["replicas"] >= 1
    assert "gateway:8000" in (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    for gpu_service in ("worker", "trainer"):
        devices = s[gpu_service]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert s["migrate"]["command"] == ["kiln", "db", "upgrade"]
    for name in ("gateway", "worker", "trainer"):
        assert s[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "artifacts:/srv/kiln" in s[name]["volumes"]  # one artifact store for all


def test_mounts_point_at_files_in_the_repository(compose: dict[str, Any]) -> None:
    graf = compose["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in graf
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/kiln.yml").read_text())
    dash_path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{dash_path}:ro" in graf
    assert "./deploy/prometheus:/etc/prometheus:ro" in compose["services"]["prometheus"]["volumes"]
    for service in compose["services"].values():
        for vol in service.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), src


def test_prometheus_scrapes_the_compose_services_on_their_ports(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for job, service in (("kiln-gateway", "gateway"), ("kiln-worker", "worker"), ("kiln-trainer", "trainer")):
        sd = jobs[job]["dns_sd_configs"][0]
        assert sd["names"] == [service]
        assert str(sd["port"]) in compose["services"][service]["expose"]
        command = compose["services"][service].get("command", [])
        if "--metrics-port" in command:  # the worker and the trainer serve /metrics on their own port
            assert command[command.index("--metrics-port") + 1] == str(sd["port"])
            assert command[command.index("--metrics-host") + 1] == "0.0.0.0"
    assert "--metrics-port" in compose["services"]["trainer"]["command"]


def test_environment_names_are_real_settings(compose: dict[str, Any]) -> None:
    known = {f"KILN_{name.upper()}" for name in Settings.model_fields}
    env = compose["x-kiln-env"]
    assert set(env) <= known, set(env) - known
    for service in compose["services"].values():
        for key in service.get("environment", {}):
            assert not key.startswith("KILN_") or key in known, key


def _stages() -> dict[str, str]:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    return {m.group(2): m.group(1) for m in re.finditer(r"^FROM\s+(\S+)\s+AS\s+(\w+)", text, re.M)}


def test_dockerfile_targets_exist_and_copy_real_paths(compose: dict[str, Any]) -> None:
    stages = _stages()
    for service in compose["services"].values():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).exists()
            assert build["target"] in stages, build["target"]
    assert {"base", "gateway", "worker", "trainer"} <= set(stages)
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    for src in re.findall(r"^COPY\s+(\S+)\s", text, re.M):
        assert (ROOT / src).exists(), src
    assert '"kiln", "gateway"' in text and '"kiln", "worker"' in text
