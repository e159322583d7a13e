"""Redis key names, all under one configurable prefix: every key the gateway, the workers and
the trainers use is built here."""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"
CHECK_GROUP = "checkers"  # the workers that run model checks for gateways without the runtimes


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str = "kiln"

    def request_stream(self, version_id: int, priority: int = 0) -> str:
        """The version's stream; with priority levels, one stream per level (`:p1` highest)."""
        base = f"{self.prefix}:req:{version_id}"
        return base if priority <= 0 else f"{base}:p{priority}"

    def request_streams(self, version_id: int, levels: int) -> list[str]:
        """Every stream of a version (the queue depth is the sum of their lengths)."""
        if levels <= 1:
            return [self.request_stream(version_id)]
        return [self.request_stream(version_id, level) for level in range(1, levels + 1)]

    def version_of(self, stream: str) -> int:
        return int(stream.rsplit(":req:", 1)[1].split(":", 1)[0])

    @property
    def streams(self) -> str:
        """Set of request streams that gateways have written to; workers serve these."""
        return f"{self.prefix}:streams"

    def reply_stream(self, gateway_id: str) -> str:
        return f"{self.prefix}:reply:{gateway_id}"

    def async_result(self, request_id: str) -> str:
        """The stream of one asynchronous request: its record, then the worker's reply."""
        return f"{self.prefix}:async:{request_id}"

    def is_async_result(self, stream: str) -> bool:
        return stream.startswith(f"{self.prefix}:async:")

    @property
    def lifecycle(self) -> str:
        """Hash: version id -> the latest load/unload command for it."""
        return f"{self.prefix}:lifecycle"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}:dead"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def worker_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    @property
    def checks(self) -> str:
        """Stream of model checks a gateway asks a worker to run (messages.CheckRequestMsg)."""
        return f"{self.prefix}:checks"

    def check_reply(self, check_id: str) -> str:
        """The stream one check's verdict is written to (messages.CheckReplyMsg)."""
        return f"{self.prefix}:check:{check_id}"

    # text generation (workers/contract/generation.py) ------------------------------------------
    def gen_stream(self, version_id: int) -> str:
        """The generation requests of one hf-causal-lm version (GenRequestMsg entries)."""
        return f"{self.prefix}:gen:{version_id}"

    def gen_version_of(self, stream: str) -> int:
        return int(stream.rsplit(":gen:", 1)[1])

    @property
    def gen_streams(self) -> str:
        """Set of generation streams that gateways have written to; generation workers serve these."""
        return f"{self.prefix}:gen-streams"

    def gen_cancel(self, request_id: str) -> str:
        """Set (with a TTL) by the gateway when a generation's client went away or cancelled."""
        return f"{self.prefix}:gencancel:{request_id}"

    def gen_progress(self, request_id: str) -> str:
        """The next chunk `seq` of a streaming generation (set by the worker with each chunk, with
        a TTL), so that a worker taking over a dead one's request numbers its error chunk after
        the chunks the client already has."""
        return f"{self.prefix}:genseq:{request_id}"

    def is_reply_stream(self, stream: str) -> bool:
        return stream.startswith(f"{self.prefix}:reply:") and len(stream) <= len(self.prefix) + 200

    # fine-tuning ------------------------------------------------------------------------------
    @property
    def finetune_jobs(self) -> str:
        """The stream of fine-tune job ids that trainers consume (workers/contract/finetune_queue)."""
        return f"{self.prefix}:ft:jobs"

    # limits and usage (service/tenancy/admission.py, workers/contract/usage.py) -------------------
    def rate_bucket(self, scope: str, ident: int) -> str:
        """Token bucket of a key (scope "k") or tenant ("t")."""
        return f"{self.prefix}:rl:{scope}:{ident}"

    def in_flight(self, scope: str, ident: int) -> str:
        """Sorted set of a key's or tenant's requests in flight (request id -> deadline ms)."""
        return f"{self.prefix}:cc:{scope}:{ident}"

    def quota_month(self, scope: str, ident: int, month: str) -> str:
        """Monthly counters of a key (scope "k") or tenant ("t"); `month` is YYYYMM."""
        return f"{self.prefix}:quota:{scope}:{ident}:{month}"

    def usage_day(self, tenant_id: int, day: str) -> str:
        """A tenant's per-day usage hash; `day` is YYYYMMDD."""
        return f"{self.prefix}:usage:{tenant_id}:{day}"
