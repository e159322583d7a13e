"""The text-generation row of the per-model dashboard (vLLM's metric vocabulary)."""

from __future__ import annotations

from panel import MV, RI, Panel, q

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
