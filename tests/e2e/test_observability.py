"""The operators' view on real processes: a Prometheus server scrapes a gateway, two workers
under load and a trainer that runs one tiny fine-tune job; every dashboard query and alert
expression runs through its HTTP API. And: one request's id appears in a gateway log line and
a worker log line."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.cli.client import KilnClient
from tests.causal_tiny import tiny_bundle
from tests.conftest import ADMIN_KEY
from tests.e2e import prom
from tests.e2e.conftest import register_http
from tests.e2e.harness import Stack
from tests.ft_data import MLP_SIGNATURE, jsonl, mlp_bytes, rows
from tests.models import onnx_add_bytes

pytestmark = pytest.mark.e2e

# Panels on features this test does not exercise (no GPU on a CPU machine; rate limits are driven
# by their own feature): their queries must parse, and may be empty.
NOT_EMITTED_HERE = re.compile(r'kiln_gpu_|kiln_rate_limited|device=~"cuda')
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def stack(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    """The e2e stack with JSON logs and per-request log lines on."""
    logs = tmp_path / "logs"
    logs.mkdir()
    s = Stack({**stack_env, "KILN_LOG_FORMAT": "json", "KILN_LOG_REQUESTS": "true"}, logs)
    try:
        yield s
    finally:
        s.stop()


def _register_add_model(url: str, name: str = "adder") -> None:
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
        assert c.post("/v1/models", json={"name": name}).status_code == 201
        r = c.post(
            f"/v1/models/{name}/versions",
            data={"format": "onnx", "config": json.dumps({"max_batch_size": 16, "max_queue_delay_ms": 5})},
            files={"file": ("model.onnx", onnx_add_bytes())},
        )
        assert r.status_code == 201, r.text


def _body(n: int) -> dict[str, object]:
    row = [float(n), 1.0, 2.0]
    return {
        "inputs": [
            {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": row},
            {"name": "y", "shape": [1, 3], "datatype": "FP32", "data": row},
        ]
    }


async def _burst(url: str, model: str, n: int) -> list[int]:
    """n concurrent good requests and a few bad ones (wrong shape: a 400 the metrics record)."""
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as c:
        good = [c.post(f"/v2/models/{model}/infer", json=_body(i)) for i in range(n)]
        bad_body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
        bad = [c.post(f"/v2/models/{model}/infer", json=bad_body) for _ in range(2)]
        responses = await asyncio.gather(*good, *bad)
    return [r.status_code for r in responses]


def _tiny_finetune_job(url: str, tmp_path: Path) -> str:
    """One fine-tune job of a few steps, so the trainer's metrics have moved."""
    kiln = KilnClient(url, ADMIN_KEY)
    (tmp_path / "clf.pt").write_bytes(mlp_bytes())
    kiln.push_model("clf", tmp_path / "clf.pt", "torchscript", signature=MLP_SIGNATURE)
    (tmp_path / "train.jsonl").write_bytes(jsonl(*rows(80, 1)))
    train = kiln.upload_file(tmp_path / "train.jsonl")
    hp = {"epochs": 2, "batch_size": 16, "learning_rate": 0.01}
    job = kiln.create_job(model="clf", training_file=train["id"], seed=3, hyperparameters=hp)
    return str(job["id"])


def _generate(url: str) -> None:
    """One streamed completion of the tiny causal model and one over its context (an error the
    metrics record), so the generation row has data."""
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as c:
        body = {"model": "talker", "prompt": "hello", "max_tokens": 8, "temperature": 0, "stream": True}
        with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            assert any(line == "data: [DONE]" for line in r.iter_lines())
        too_long = {"model": "talker", "prompt": "x" * 300, "max_tokens": 8}  # the context is 256
        assert c.post("/v1/completions", json=too_long).status_code == 400


def _value(server: prom.Prometheus, expr: str) -> float | None:
    result = server.query(expr)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _missing(server: prom.Prometheus) -> list[str]:
    """The queries that fail to run, or that should return data and do not (yet)."""
    problems = []
    for uid, title, expr in prom.panel_queries():
        body = server.query(expr)
        if body.get("status") != "success":
            problems.append(f"{uid} / {title}: {body.get('error')} :: {expr}")
        elif not body["data"]["result"] and not NOT_EMITTED_HERE.search(expr):
            problems.append(f"{uid} / {title}: no data :: {expr}")
    for uid, var, label, metric in prom.variable_queries():
        if not metric.startswith(("kiln_gpu_",)) and not server.label_values(label, metric):
            problems.append(f"{uid}: variable {var} has no values")
    return problems


@pytest.mark.skipif(prom.missing("prometheus"), reason="prometheus is not installed (make test installs it)")
def test_prometheus_scrapes_the_stack_and_every_dashboard_and_alert_query_runs(
    stack: Stack, tmp_path: Path
) -> None:
    stack.start_gateway(processes=2)  # metrics aggregated across processes
    stack.start_worker("worker-1")
    stack.start_worker("worker-2")
    stack.start_trainer("trainer")
    _register_add_model(stack.url)
    register_http(stack.url, "talker", tiny_bundle("llama", seed=5), "hf-causal-lm")
    job_id = _tiny_finetune_job(stack.url, tmp_path)
    workers = [f"127.0.0.1:{p}" for n, p in stack.worker_ports.items() if n.startswith("worker")]
    server = prom.Prometheus(
        tmp_path,
        {
            "kiln-gateway": [f"127.0.0.1:{stack.gateway_metrics_port}"],  # the operators' port
            "kiln-worker": workers,
            "kiln-trainer": [f"127.0.0.1:{stack.worker_ports['trainer']}"],
        },
        [prom.DEPLOY / "prometheus" / "alerts.yml"],
    )
    try:
        server.wait_ready()
        problems: list[str] = ["not run"]
        deadline = time.monotonic() + 120
        succeeded = 'sum(kiln_trainer_jobs_total{outcome="succeeded"})'
        while (problems or not _value(server, succeeded)) and time.monotonic() < deadline:
            codes = asyncio.run(_burst(stack.url, "adder", 48))  # load, let it scrape, ask again
            assert codes.count(200) == 48 and codes.count(400) == 2, codes
            _generate(stack.url)
            stack.check_alive()
            problems = _missing(server)
        targets = httpx.get(f"{server.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        health = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
        names = httpx.get(f"{server.url}/api/v1/label/__name__/values", timeout=10).json()["data"]
        assert not problems, "\n".join([*problems, str(health), str(names)])

        up = server.query("up")["data"]["result"]
        assert {(s["metric"]["job"], s["value"][1]) for s in up} == {
            ("kiln-gateway", "1"),
            ("kiln-worker", "1"),
            ("kiln-trainer", "1"),
        }
        # the tiny job: 2 epochs of 4 steps (64 training rows after the 20% hold-out)
        assert _value(server, succeeded) == 1, KilnClient(stack.url, ADMIN_KEY).get_job(job_id)
        assert _value(server, "sum(kiln_trainer_steps_total)") == 8
        assert _value(server, "sum(kiln_trainer_step_seconds_count)") == 8
        assert _value(server, "sum(kiln_trainer_epoch_duration_seconds_count)") == 2
        deadline = time.monotonic() + 30  # the gateways' gauge, counted from the database per scrape
        while _value(server, 'max(kiln_finetune_jobs{status="succeeded"})') != 1:
            assert time.monotonic() < deadline, server.query("kiln_finetune_jobs")
            time.sleep(0.5)
        assert _value(server, 'max(kiln_finetune_jobs{status="queued"})') == 0
        mean_batch = server.query("sum(kiln_inference_count_total) / sum(kiln_inference_exec_count_total)")[
            "data"
        ]["result"]
        assert float(mean_batch[0]["value"][1]) > 1

        for name, expr in prom.alert_rules():
            body = server.query(expr)
            assert body["status"] == "success", f"alert {name}: {body.get('error')}"
        rules = httpx.get(f"{server.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        loaded = {r["name"]: r for g in rules for r in g["rules"]}
        assert set(loaded) == {name for name, _ in prom.alert_rules()}
        deadline = time.monotonic() + 30
        while any(r.get("health") != "ok" for r in loaded.values()) and time.monotonic() < deadline:
            time.sleep(0.5)  # rules are evaluated every second; poll until each has run once
            rules = httpx.get(f"{server.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
            loaded = {r["name"]: r for g in rules for r in g["rules"]}
        assert all(r.get("health") == "ok" for r in loaded.values()), loaded
    finally:
        server.stop()


def _json_lines(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_gateway_and_worker_log_lines_share_the_request_id(stack: Stack) -> None:
    stack.start_gateway()
    stack.start_worker("worker-1")
    _register_add_model(stack.url)
    r = httpx.post(f"{stack.url}/v2/models/adder/infer", json=_body(1), headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    request_id = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)

    def lines(name: str) -> list[dict[str, object]]:
        text = (stack.log_dir / f"{name}.log").read_text()
        return [d for d in _json_lines(text) if d.get("request_id") == request_id]

    deadline = time.monotonic() + 10  # the worker writes its line before it replies; flushes may lag
    while not (lines("gateway") and lines("worker-1")) and time.monotonic() < deadline:
        time.sleep(0.05)
    gateway, worker = lines("gateway"), lines("worker-1")
    assert gateway and worker, (stack.procs[0].log(), stack.procs[1].log())
    assert gateway[0]["outcome"] == "success" and gateway[0]["model"] == "adder"
    assert worker[0]["ok"] is True and worker[0]["logger"] == "kiln.requests"
    assert gateway[0]["worker"] == worker[0]["worker"]


def _cuda() -> bool:
    from workers.common.device import cuda_available

    return cuda_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_a_worker_on_a_gpu_exports_its_telemetry(stack: Stack) -> None:
    stack.start_gateway()
    stack.start_worker("worker-1")
    text = httpx.get(f"http://127.0.0.1:{stack.worker_ports['worker-1']}/metrics", timeout=10).text
    for name in ("utilization", "memory_used_bytes", "memory_total_bytes", "temperature_celsius"):
        assert f"kiln_gpu_{name}{{" in text, name
