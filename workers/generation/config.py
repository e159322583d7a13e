"""The generation loop's settings (built by `kiln worker` from the service settings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GenConfig:
    max_running: int = 32  # requests admitted to this worker's backends at once; beyond, entries stay unread
    flush_tokens: int = 4  # a streaming request's chunk goes out after this many tokens ...
    flush_ms: int = 20  # ... or once its oldest unsent token is this old (the first token at once)
    cancel_poll_ms: int = 50  # how often the running requests' cancel keys are read (one MGET)
    stats_ms: int = 100  # how often backend.stats() feeds the gauges
    claim_idle_ms: int = 5_000  # live workers renew their entries; idle this long means gone
    claim_interval_ms: int = 1_000
    max_deliveries: int = 3  # as the inference path: then dead-lettered
    reply_ttl_s: int = 300
    deadline_grace_ms: int = 1_000  # a cancelled request whose backend never ends it is ended anyway
    idle_block_ms: int = 100  # XREADGROUP BLOCK while nothing runs
