"""Generates the Grafana dashboards in deploy/grafana/dashboards/ (run it after an edit:
`python deploy/grafana/dashboards.py`; a test checks the JSON files match this source).

Every query uses only Prometheus and these Grafana variables: $__rate_interval and the
dashboard's own template variables (regex matchers, `=~"$var"`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its siblings, run as a script or by path
from boards_tenants import FINETUNE, TENANTS
from generation_panels import GENERATION
from panel import DS, MV, RI, Board, Panel, q

OUT = Path(__file__).resolve().parent / "dashboards"
REQ_RATE = f"sum(rate(kiln_inference_request_success_total[{RI}]))"
FAIL_RATE = f"sum(rate(kiln_inference_request_failure_total[{RI}]))"
SERVER_FAIL = f'sum(rate(kiln_inference_request_failure_total{{reason!~"invalid_input|rate_limited"}}[{RI}]))'

OVERVIEW = Board(
    "kiln-overview",
    "modelkiln / Overview",
    [
        Panel("Requests answered /s", [(REQ_RATE, "answered")], "reqps", "stat"),
        Panel(
            "Server-side error ratio",
            [(f"{SERVER_FAIL} / clamp_min({REQ_RATE} + {FAIL_RATE}, 1e-9)", "errors")],
            "percentunit",
            "stat",
        ),
        Panel("Workers up", [('sum(up{job="kiln-worker"})', "workers")], kind="stat"),
        Panel("Pending requests", [("sum(kiln_inference_pending_request_count)", "pending")], kind="stat"),
        Panel(
            "Requests /s by model",
            [(f"sum by (model) (rate(kiln_inference_request_success_total[{RI}]))", "{{model}}")],
            "reqps",
        ),
        Panel(
            "Failures /s by reason",
            [(f"sum by (reason) (rate(kiln_inference_request_failure_total[{RI}]))", "{{reason}}")],
            "reqps",
        ),
        Panel(
            "End-to-end latency",
            [
                (q(0.5, "kiln_inference_request_duration_seconds", ""), "p50"),
                (q(0.99, "kiln_inference_request_duration_seconds", ""), "p99"),
            ],
            "s",
        ),
        Panel(
            "Queue wait and compute (p99)",
            [
                (q(0.99, "kiln_inference_queue_duration_seconds", ""), "queue p99"),
                (q(0.99, "kiln_inference_compute_infer_duration_seconds", ""), "compute p99"),
            ],
            "s",
        ),
        Panel(
            "Mean batch size (inference count / execution count)",
            [
                (
                    f"sum(rate(kiln_inference_count_total[{RI}])) "
                    f"/ clamp_min(sum(rate(kiln_inference_exec_count_total[{RI}])), 1e-9)",
                    "mean batch",
                )
            ],
        ),
        Panel("Scrape targets up", [("sum by (job) (up)", "{{job}}")]),
        Panel("Loaded versions per worker", [("kiln_loaded_versions", "{{instance}}")]),
        Panel(
            "Dead-lettered requests (1h)",
            [("sum(increase(kiln_dead_lettered_requests_total[1h]))", "dead-lettered")],
            kind="stat",
        ),
        Panel(
            "Rate-limited requests /s",
            [(f"sum(rate(kiln_rate_limited_requests_total[{RI}]))", "rate-limited")],
            "reqps",
        ),
        Panel("GPU utilisation (mean)", [("avg(kiln_gpu_utilization)", "GPUs")], "percentunit"),
    ],
)

# text generation (workers/generation/metrics.py, vLLM's vocabulary): a row of the per-model board
PER_MODEL = Board(
    "kiln-model",
    "modelkiln / Per model",
    [
        Panel(
            "Requests /s",
            [
                (
                    f"sum by (model, version) (rate(kiln_inference_request_success_total{{{MV}}}[{RI}]))",
                    "{{model}}:{{version}}",
                )
            ],
            "reqps",
        ),
        Panel(
            "Failures /s by reason",
            [
                (
                    f"sum by (model, reason) (rate(kiln_inference_request_failure_total{{{MV}}}[{RI}]))",
                    "{{model}} {{reason}}",
                )
            ],
            "reqps",
        ),
        Panel(
            "End-to-end latency",
            [
                (q(0.5, "kiln_inference_request_duration_seconds", MV, "le, model"), "{{model}} p50"),
                (q(0.95, "kiln_inference_request_duration_seconds", MV, "le, model"), "{{model}} p95"),
                (q(0.99, "kiln_inference_request_duration_seconds", MV, "le, model"), "{{model}} p99"),
            ],
            "s",
        ),
        Panel(
            "Queue wait",
            [
                (q(0.5, "kiln_inference_queue_duration_seconds", MV, "le, model"), "{{model}} p50"),
                (q(0.99, "kiln_inference_queue_duration_seconds", MV, "le, model"), "{{model}} p99"),
            ],
            "s",
        ),
        Panel(
            "Compute per batch",
            [
                (q(0.5, "kiln_inference_compute_infer_duration_seconds", MV, "le, model"), "{{model}} p50"),
                (q(0.99, "kiln_inference_compute_infer_duration_seconds", MV, "le, model"), "{{model}} p99"),
            ],
            "s",
        ),
        Panel(
            "Mean batch size (items, requests)",
            [
                (
                    f"sum by (model) (rate(kiln_inference_count_total{{{MV}}}[{RI}])) "
                    "/ clamp_min(sum by (model) "
                    f"(rate(kiln_inference_exec_count_total{{{MV}}}[{RI}])), 1e-9)",
                    "{{model}} items",
                ),
                (
                    f"sum by (model) (rate(kiln_batch_requests_sum{{{MV}}}[{RI}])) "
                    f"/ clamp_min(sum by (model) (rate(kiln_batch_requests_count{{{MV}}}[{RI}])), 1e-9)",
                    "{{model}} requests",
                ),
            ],
        ),
        Panel(
            "Executions /s",
            [(f"sum by (model) (rate(kiln_inference_exec_count_total{{{MV}}}[{RI}]))", "{{model}}")],
            "ops",
        ),
        Panel(
            "Worker-side failures /s",
            [
                (
                    f"sum by (model, reason) (rate(kiln_worker_request_failure_total{{{MV}}}[{RI}]))",
                    "{{model}} {{reason}}",
                )
            ],
            "reqps",
        ),
        Panel(
            "Model load time (max)",
            [
                (
                    f"max by (model, version) (kiln_model_load_duration_seconds_sum{{{MV}}} "
                    f"/ clamp_min(kiln_model_load_duration_seconds_count{{{MV}}}, 1))",
                    "{{model}}:{{version}}",
                )
            ],
            "s",
        ),
        Panel(
            "Memory per loaded version",
            [(f"kiln_model_memory_bytes{{{MV}}}", "{{model}}:{{version}} {{device}} {{instance}}")],
            "bytes",
        ),
        *GENERATION,
    ],
    [
        ("model", "kiln_inference_request_success_total", "model"),
        ("version", "kiln_inference_request_success_total", "version"),
    ],
)

GPUS = Board(
    "kiln-gpus",
    "modelkiln / GPUs",
    [
        Panel(
            "Utilisation", [('kiln_gpu_utilization{gpu=~"$gpu"}', "{{instance}} GPU {{gpu}}")], "percentunit"
        ),
        Panel(
            "Memory used",
            [
                ('kiln_gpu_memory_used_bytes{gpu=~"$gpu"}', "{{instance}} GPU {{gpu}} used"),
                ('kiln_gpu_memory_total_bytes{gpu=~"$gpu"}', "{{instance}} GPU {{gpu}} total"),
            ],
            "bytes",
        ),
        Panel(
            "Memory used (fraction)",
            [
                (
                    'kiln_gpu_memory_used_bytes{gpu=~"$gpu"} / kiln_gpu_memory_total_bytes{gpu=~"$gpu"}',
                    "{{instance}} GPU {{gpu}}",
                )
            ],
            "percentunit",
        ),
        Panel(
            "Power",
            [
                ('kiln_gpu_power_usage_watts{gpu=~"$gpu"}', "{{instance}} GPU {{gpu}}"),
                ('kiln_gpu_power_limit_watts{gpu=~"$gpu"}', "{{instance}} GPU {{gpu}} limit"),
            ],
            "watt",
        ),
        Panel(
            "Temperature",
            [('kiln_gpu_temperature_celsius{gpu=~"$gpu"}', "{{instance}} GPU {{gpu}}")],
            "celsius",
        ),
        Panel(
            "Device memory per loaded version",
            [('kiln_model_memory_bytes{device=~"cuda.*"}', "{{model}}:{{version}} {{instance}}")],
            "bytes",
        ),
    ],
    [("gpu", "kiln_gpu_utilization", "gpu")],
)

BOARDS = [OVERVIEW, PER_MODEL, GPUS, TENANTS, FINETUNE]


def _panel(i: int, p: Panel) -> dict[str, Any]:
    if p.kind == "row":  # a section header across the board
        row = {"id": i + 1, "type": "row", "title": p.title, "collapsed": False, "panels": []}
        return {**row, "datasource": DS, "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}, "targets": []}
    w, h = (6, 4) if p.kind == "stat" else (12, 8)
    return {
        "id": i + 1,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": 0, "y": 0},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if p.kind != "stat" else {},
        "targets": [
            {"refId": chr(65 + j), "datasource": DS, "expr": expr, "legendFormat": legend}
            for j, (expr, legend) in enumerate(p.exprs)
        ],
    }


def _layout(panels: list[dict[str, Any]]) -> None:
    x = y = row_h = 0
    for p in panels:
        g = p["gridPos"]
        if x + g["w"] > 24:
            x, y, row_h = 0, y + row_h, 0
        g["x"], g["y"] = x, y
        x += g["w"]
        row_h = max(row_h, g["h"])


def _variable(name: str, metric: str, label: str) -> dict[str, Any]:
    query = f"label_values({metric}, {label})"
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"var-{name}"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def render(board: Board) -> dict[str, Any]:
    panels = [_panel(i, p) for i, p in enumerate(board.panels)]
    _layout(panels)
    return {
        "uid": board.uid,
        "title": board.title,
        "tags": ["modelkiln"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [_variable(*v) for v in board.variables]},
        "annotations": {"list": []},
        "panels": panels,
    }


def files() -> dict[str, str]:
    return {f"{b.uid}.json": json.dumps(render(b), indent=2) + "\n" for b in BOARDS}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
