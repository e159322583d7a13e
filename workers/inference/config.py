"""The inference worker's settings (built by `kiln worker` from the service settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from model_store.limits import ArtifactLimits
from workers.inference.fenced import FenceMode


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    read_count: int = 64
    claim_idle_ms: int = 5_000  # live workers renew their entries; idle this long means gone
    claim_interval_ms: int = 1_000
    max_deliveries: int = 3
    heartbeat_ttl_s: float = 5.0
    reply_ttl_s: int = 300
    async_result_ttl_s: int = 3600
    threads: int = 0
    metrics_port: int = 0
    memory_budget_bytes: int = 0  # 0: unlimited; else least-recently-used versions are unloaded
    artifact_limits: ArtifactLimits = field(default_factory=ArtifactLimits)  # bundles are loaded under these
    fence: FenceMode = "required"  # model code in fenced children (workers/inference/fenced.py)
    model_memory_bytes: int = 8 << 30  # address-space limit of each CPU model process
    hung_backoff_s: float = 30.0  # a version unloaded after it hung loads again after this
    max_adapters: int = 8  # LoRA adapters held beside one base instance (least recently used evicted)
