"""Generation metrics, in vLLM's vocabulary (vllm:* -> kiln_gen_*). Hooks never raise."""

from __future__ import annotations

import contextlib
import logging

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from workers.contract.usage import TenantLabels, TokenCharge
from workers.generation.backend import GenStats

log = logging.getLogger("kiln.metrics")

_TTFT = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40)
_ITL = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5)
_E2E = (0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480)


class GenMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY, max_tenant_labels: int = 100) -> None:
        r, lv = registry, ("model", "version")
        self.ttft = Histogram(
            "kiln_gen_time_to_first_token_seconds", "Enqueue to first token", lv, buckets=_TTFT, registry=r
        )
        self.itl = Histogram(
            "kiln_gen_inter_token_latency_seconds",
            "Time between a request's tokens (per event, divided by its tokens)",
            lv,
            buckets=_ITL,
            registry=r,
        )
        self.e2e = Histogram(
            "kiln_gen_e2e_request_latency_seconds", "Enqueue to last chunk", lv, buckets=_E2E, registry=r
        )
        self.prompt_tokens = Counter("kiln_gen_prompt_tokens", "Prompt tokens processed", lv, registry=r)
        self.generation_tokens = Counter("kiln_gen_generation_tokens", "Tokens generated", lv, registry=r)
        self.finished = Counter(
            "kiln_gen_request_success",
            "Requests finished, by finish reason",
            (*lv, "finished_reason"),
            registry=r,
        )
        self.failures = Counter(
            "kiln_gen_request_failure", "Requests ended in an error chunk", (*lv, "code"), registry=r
        )
        self.running = Gauge(
            "kiln_gen_num_requests_running", "Sequences in the running batch", lv, registry=r
        )
        self.waiting = Gauge("kiln_gen_num_requests_waiting", "Admitted, not yet scheduled", lv, registry=r)
        self.kv_usage = Gauge(
            "kiln_gen_kv_cache_usage_perc", "Fraction of the paged KV cache in use (0..1)", lv, registry=r
        )
        self.loaded = Gauge(
            "kiln_gen_loaded_versions", "Generation versions loaded on this worker", registry=r
        )
        self.lora_loaded = Gauge(
            "kiln_gen_lora_adapters_loaded", "LoRA adapters held on a base version's model", lv, registry=r
        )
        self.lora_loads = Counter(
            "kiln_gen_lora_adapter_loads", "LoRA adapters loaded onto a base version's model", lv, registry=r
        )
        self.lora_evictions = Counter(
            "kiln_gen_lora_adapter_evictions", "LoRA adapters evicted (least recently used)", lv, registry=r
        )
        self._lora_seen: dict[tuple[str, str], tuple[int, int]] = {}  # cumulative loads, evictions
        self.tenant_labels = TenantLabels(max_tenant_labels)
        self.tenant_tokens = Counter(
            "kiln_gen_tenant_tokens",
            "Prompt + generated tokens charged to a tenant (tenants past the label limit fold into 'other')",
            ("tenant",),
            registry=r,
        )

    def stats(self, model: str, version: int, s: GenStats) -> None:
        try:
            lv = (model, str(version))
            self.running.labels(*lv).set(s.running)
            self.waiting.labels(*lv).set(s.waiting)
            self.kv_usage.labels(*lv).set(s.kv_cache_usage)
            if "adapters" in s.extra:
                self._lora(lv, s.extra)
        except Exception:  # metrics never break a request
            log.exception("metrics hook failed")

    def _lora(self, lv: tuple[str, str], extra: dict[str, int]) -> None:
        """The engine counts since it started: the counters go up by what is new."""
        self.lora_loaded.labels(*lv).set(extra.get("adapters", 0))
        loads, evictions = extra.get("adapter_loads", 0), extra.get("adapter_evictions", 0)
        seen_loads, seen_evictions = self._lora_seen.get(lv, (0, 0))
        self.lora_loads.labels(*lv).inc(max(loads - seen_loads, 0))
        self.lora_evictions.labels(*lv).inc(max(evictions - seen_evictions, 0))
        self._lora_seen[lv] = (loads, evictions)

    def forget(self, model: str, version: int) -> None:
        """An unloaded version: its gauges go (a stale 'running' would lie)."""
        self._lora_seen.pop((model, str(version)), None)
        for g in (self.running, self.waiting, self.kv_usage, self.lora_loaded):
            with contextlib.suppress(KeyError):
                g.remove(model, str(version))

    def first_token(self, model: str, version: int, since_enqueue_s: float) -> None:
        try:
            self.ttft.labels(model, str(version)).observe(max(since_enqueue_s, 0.0))
        except Exception:
            log.exception("metrics hook failed")

    def tokens(self, model: str, version: int, gap_s: float, n: int) -> None:
        try:
            h = self.itl.labels(model, str(version))
            for _ in range(min(n, 64)):
                h.observe(gap_s / n)
        except Exception:
            log.exception("metrics hook failed")

    def ended(self, model: str, version: int, finish: str, code: str, since_enqueue_s: float) -> None:
        try:
            lv = (model, str(version))
            self.e2e.labels(*lv).observe(max(since_enqueue_s, 0.0))
            if finish == "error":
                self.failures.labels(*lv, code).inc()
            else:
                self.finished.labels(*lv, finish).inc()
        except Exception:
            log.exception("metrics hook failed")

    def rejected(self, model: str, version: int, code: str) -> None:
        """A request the model refused at submit (over its context, a chat it cannot template)."""
        try:
            self.failures.labels(model, str(version), code).inc()
        except Exception:
            log.exception("metrics hook failed")

    def charged(self, c: TokenCharge) -> None:
        try:
            lv = (c.model, str(c.version))
            self.prompt_tokens.labels(*lv).inc(c.prompt_tokens)
            self.generation_tokens.labels(*lv).inc(c.completion_tokens)
            self.tenant_tokens.labels(self.tenant_labels(c.tenant_id)).inc(
                c.prompt_tokens + c.completion_tokens
            )
        except Exception:
            log.exception("metrics hook failed")
