"""Generation metrics at the gateway, named after vLLM's in spirit (time to first token,
end-to-end latency, prompt and generated tokens), by model version. A hook that fails never
breaks a request. One set per process (prometheus-client's registry is global)."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

log = logging.getLogger("kiln.metrics")
_LAT = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_METRICS: TextMetrics | None = None


class TextMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        labels = ("model", "version")
        self.first_token = Histogram(
            "kiln_generation_time_to_first_token_seconds",
            "From submit to the first chunk",
            labels,
            buckets=_LAT,
            registry=registry,
        )
        self.e2e = Histogram(
            "kiln_generation_e2e_request_latency_seconds",
            "From submit to the last chunk",
            labels,
            buckets=_LAT,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "kiln_generation_prompt_tokens",
            "Prompt tokens of finished generations",
            labels,
            registry=registry,
        )
        self.generated_tokens = Counter(
            "kiln_generation_generated_tokens", "Tokens generated", labels, registry=registry
        )
        self.requests = Counter(
            "kiln_generation_requests",
            "Generations by outcome (finished, cancelled by the client, failed)",
            (*labels, "outcome"),
            registry=registry,
        )

    def first(self, model: str, version: int, seconds: float) -> None:
        try:
            self.first_token.labels(model, str(version)).observe(seconds)
        except Exception:
            log.exception("metrics hook failed")

    def ended(
        self, model: str, version: int, outcome: str, seconds: float, prompt: int, generated: int
    ) -> None:
        try:
            v = str(version)
            self.requests.labels(model, v, outcome).inc()
            if outcome == "finished":
                self.e2e.labels(model, v).observe(seconds)
            self.prompt_tokens.labels(model, v).inc(prompt)
            self.generated_tokens.labels(model, v).inc(generated)
        except Exception:
            log.exception("metrics hook failed")


def text_metrics() -> TextMetrics:
    global _METRICS
    if _METRICS is None:
        _METRICS = TextMetrics()
    return _METRICS
