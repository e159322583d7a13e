"""Generates the Grafana dashboards in deploy/grafana/dashboards/ (run it after an edit:
`python deploy/grafana/dashboards.py`; a test checks the JSON files match this source).

Every query uses only Prometheus and these Grafana variables: $__rate_interval and the
dashboard's own template variables (regex matchers, `=~"$var"`)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "kiln-prometheus"}
RI = "$__rate_interval"


@dataclass
class Panel:
    title: str
    exprs: list[tuple[str, str]]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat", or "row" (a section header, no queries)
    description: str = ""


@dataclass
class Board:
    uid: str
    title: str
    panels: list[Panel]
    variables: list[tuple[str, str, str]] = field(default_factory=list)  # (name, metric, label)


def q(quantile: float, metric: str, sel: str, by: str = "le") -> str:
    return f"histogram_quantile({quantile}, sum by ({by}) (rate({metric}_bucket{{{sel}}}[{RI}])))"


MV = 'model=~"$model", version=~"$version"'
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
GENERATION = [
    Panel("Text generation", [], kind="row"),
    Panel(
        "Time to first token",
        [
            (q(p, "kiln_gen_time_to_first_token_seconds", MV, "le, model"), f"{{{{model}}}} p{int(p * 100)}")
            for p in (0.5, 0.99)
        ],
        "s",
    ),
    Panel(
        "Inter-token latency",
        [
            (q(p, "kiln_gen_inter_token_latency_seconds", MV, "le, model"), f"{{{{model}}}} p{int(p * 100)}")
            for p in (0.5, 0.99)
        ],
        "s",
    ),
    Panel(
        "End-to-end generation latency",
        [
            (q(p, "kiln_gen_e2e_request_latency_seconds", MV, "le, model"), f"{{{{model}}}} p{int(p * 100)}")
            for p in (0.5, 0.99)
        ],
        "s",
    ),
    Panel(
        "Tokens /s",
        [
            (f"sum by (model) (rate(kiln_gen_prompt_tokens_total{{{MV}}}[{RI}]))", "{{model}} prompt"),
            (f"sum by (model) (rate(kiln_gen_generation_tokens_total{{{MV}}}[{RI}]))", "{{model}} generated"),
        ],
    ),
    Panel(
        "Sequences running and waiting",
        [
            (f"sum by (model) (kiln_gen_num_requests_running{{{MV}}})", "{{model}} running"),
            (f"sum by (model) (kiln_gen_num_requests_waiting{{{MV}}})", "{{model}} waiting"),
        ],
    ),
    Panel(
        "KV cache usage",
        [(f"max by (model, instance) (kiln_gen_kv_cache_usage_perc{{{MV}}})", "{{model}} {{instance}}")],
        "percentunit",
    ),
    Panel(
        "Generation errors /s by code",
        [
            (
                f"sum by (model, code) (rate(kiln_gen_request_failure_total{{{MV}}}[{RI}]))",
                "{{model}} {{code}}",
            )
        ],
        "reqps",
    ),
]

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

TV = 'tenant=~"$tenant"'
TENANTS = Board(
    "kiln-tenants",
    "modelkiln / Tenants",
    [
        Panel(
            "Requests /s by tenant",
            [
                (
                    "sum by (tenant) "
                    f'(rate(kiln_tenant_inference_requests_total{{{TV}, outcome="success"}}[{RI}]))',
                    "{{tenant}}",
                )
            ],
            "reqps",
        ),
        Panel(
            "Failures /s by tenant and outcome",
            [
                (
                    "sum by (tenant, outcome) "
                    f'(rate(kiln_tenant_inference_requests_total{{{TV}, outcome!="success"}}[{RI}]))',
                    "{{tenant}} {{outcome}}",
                )
            ],
            "reqps",
        ),
        Panel(
            "Requests by tenant and model (1h)",
            [
                (
                    f"sum by (tenant, model) (increase(kiln_tenant_inference_requests_total{{{TV}}}[1h]))",
                    "{{tenant}} {{model}}",
                )
            ],
        ),
        Panel(
            "Rate-limited /s by tenant",
            [(f"sum by (tenant) (rate(kiln_rate_limited_requests_total{{{TV}}}[{RI}]))", "{{tenant}}")],
            "reqps",
        ),
    ],
    [("tenant", "kiln_tenant_inference_requests_total", "tenant")],
)

FINETUNE = Board(
    "kiln-finetune",
    "modelkiln / Fine-tune jobs",
    [
        Panel(
            "Jobs by status",
            [("max by (status) (kiln_finetune_jobs)", "{{status}}")],
            description="Counted from the database by each gateway at scrape time (max: not a sum).",
        ),
        Panel("Trainers busy", [("sum(kiln_trainer_busy)", "busy")], kind="stat"),
        Panel(
            "Job runs ended (1h) by outcome",
            [("sum by (outcome) (increase(kiln_trainer_jobs_total[1h]))", "{{outcome}}")],
            description="handed_back: the trainer stopped and re-queued the job; lost: its lease "
            "ran out and another trainer took it; abandoned: database or queue unavailable.",
        ),
        Panel(
            "Optimizer steps /s",
            [(f"sum by (instance) (rate(kiln_trainer_steps_total[{RI}]))", "{{instance}}")],
            "ops",
        ),
        Panel(
            "Optimizer step time",
            [
                (q(0.5, "kiln_trainer_step_seconds", ""), "p50"),
                (q(0.99, "kiln_trainer_step_seconds", ""), "p99"),
            ],
            "s",
        ),
        Panel(
            "Training loss (last step, per trainer)",
            [("kiln_trainer_loss", "{{instance}}")],
            description="Per-job curves: GET /v1/fine_tuning/jobs/{id}/metrics or `kiln finetune plot`.",
        ),
        Panel(
            "Epoch duration",
            [
                (q(0.5, "kiln_trainer_epoch_duration_seconds", ""), "p50"),
                (q(0.99, "kiln_trainer_epoch_duration_seconds", ""), "p99"),
            ],
            "s",
        ),
    ],
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
