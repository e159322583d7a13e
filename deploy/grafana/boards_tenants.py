"""The tenants' and the fine-tuning dashboards."""

from __future__ import annotations

from panel import RI, Board, Panel, q

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
