"""Redis key names, all under one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "kiln"

    def request_stream(self, version_id: int) -> str:
        return f"{self.prefix}:req:{version_id}"

    def version_of(self, stream: str) -> int:
        return int(stream.rsplit(":", 1)[1])

    @property
    def streams(self) -> str:
        """Set of request streams that gateways have written to; workers serve these."""
        return f"{self.prefix}:streams"

    def reply_stream(self, gateway_id: str) -> str:
        return f"{self.prefix}:reply:{gateway_id}"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}:dead"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def worker_pattern(self) -> str:
        return f"{self.prefix}:worker:*"
