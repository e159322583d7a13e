"""All settings in one pydantic-settings class (environment prefix KILN_), validated at start."""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_store.checks import FencedCheck
from model_store.limits import ArtifactLimits, budget_from


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", extra="ignore")

    env: Literal["dev", "prod"] = "dev"
    data_dir: Path = Path(".kiln")
    database_url: str = ""  # empty: SQLite in data_dir (embedded mode)
    redis_url: str = ""  # empty: the private redis-server that `kiln serve` starts
    redis_prefix: str = Field(default="kiln", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    bootstrap_admin_key: str = ""
    default_tenant: str = "default"

    # logs: "json" for one JSON object per line; log_requests adds a line per request (with its id)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_requests: bool = False

    # request path
    request_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # text generation (service/text): the longest a completion may run, and request bounds
    generation_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    max_chat_messages: int = Field(default=512, ge=1, le=100_000)
    max_prompt_chars: int = Field(default=400_000, ge=1, le=50_000_000)
    max_embedding_inputs: int = Field(default=512, ge=1, le=100_000)
    max_text_body_bytes: int = Field(default=8 << 20, gt=0)  # bodies of the OpenAI text routes
    max_body_bytes: int = Field(default=64 << 20, gt=0)
    max_upload_bytes: int = Field(default=2 << 30, gt=0)
    # bundles (hf-encoder): unpacked at most min(max_upload_bytes * bundle_expansion_factor,
    # max_unpacked_bytes), and at most max_bundle_ratio times the archive's own size
    bundle_expansion_factor: int = Field(default=4, ge=1, le=1000)
    max_unpacked_bytes: int = Field(default=8 << 30, gt=0)
    max_bundle_members: int = Field(default=256, ge=1, le=100_000)
    max_bundle_ratio: int = Field(default=100, ge=1, le=100_000)
    max_model_parameters: int = Field(default=1_000_000_000, gt=0)  # hf-encoder, estimated
    max_tensor_elements: int = Field(default=1 << 26, gt=0)
    # what one request may cost before a route reads it (service/tenancy/guard.py): management JSON bodies;
    # inference bodies use max_body_bytes, uploads max_upload_bytes (datasets max_dataset_bytes)
    max_json_body_bytes: int = Field(default=1 << 20, gt=0)
    # BYTES tensors (JSON strings or the binary extension's length-prefixed elements), per input
    max_bytes_elements: int = Field(default=1 << 20, gt=0)
    max_bytes_tensor_bytes: int = Field(default=64 << 20, gt=0)
    # inference bodies over this size are decoded in a worker thread, off the event loop
    decode_thread_bytes: int = Field(default=256 << 10, ge=0)
    key_cache_ttl_s: float = Field(default=2.0, ge=0, le=60)
    version_cache_ttl_s: float = Field(default=2.0, ge=0, le=60)
    docs_enabled: bool = True
    async_result_ttl_s: int = Field(default=3600, ge=10, le=7 * 86400)  # results of respond-async

    # tenants
    key_rotation_overlap_s: int = Field(default=86_400, ge=0, le=90 * 86_400)
    metrics_max_tenants: int = Field(default=100, ge=1, le=10_000)
    # the gateway's /metrics (tenant ids and model names in labels) is served only here, for
    # operators and Prometheus, never on the public port; 0: not served
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # workers
    worker_read_count: int = Field(default=64, ge=1, le=4096)
    claim_idle_ms: int = Field(default=5_000, ge=100)  # entries idle this long: their worker is gone
    claim_interval_ms: int = Field(default=1_000, ge=50)
    max_deliveries: int = Field(default=3, ge=1, le=100)
    heartbeat_ttl_s: float = Field(default=5.0, gt=0)
    # a gateway is ready (GET /v2/health/ready) only with at least this many live, ready workers
    ready_min_workers: int = Field(default=1, ge=0, le=10_000)
    # kiln serve: a dead worker or trainer is restarted after this delay, doubled per quick failure
    serve_restart_delay_s: float = Field(default=0.5, gt=0, le=60)
    serve_restart_max_delay_s: float = Field(default=30.0, gt=0, le=3600)
    reply_ttl_s: int = Field(default=300, ge=10)
    # text generation on workers (workers/generation/loop.py): off leaves generation streams to
    # other workers; max_running sequences per worker (continuous batching), beyond it entries
    # stay queued; a streaming chunk goes out every flush_tokens tokens or flush_ms (first at once)
    gen_enabled: bool = True
    gen_max_running: int = Field(default=32, ge=1, le=4096)
    gen_flush_tokens: int = Field(default=4, ge=1, le=1024)
    gen_flush_ms: int = Field(default=20, ge=1, le=10_000)
    gen_cancel_poll_ms: int = Field(default=50, ge=10, le=1000)
    # LoRA adapters (lora-adapter versions) held at once on each base model's engine (LRU); 0:
    # adapters are not served (and the engine keeps async batching and prefix block sharing)
    gen_max_adapters: int = Field(default=8, ge=0, le=1024)
    worker_memory_budget_mb: int = Field(default=0, ge=0)  # 0: unlimited; else LRU unloading
    # model code (upload checks, model instances, fine-tunes) runs only in fenced child processes
    # (model_store.fence): `required` refuses to run it where Landlock is missing, `auto` runs it
    # in a limited child without the filesystem fence (warned), `off` runs it in the calling
    # process (debugging only)
    fence: Literal["required", "auto", "off"] = "required" if sys.platform == "linux" else "auto"
    model_memory_mb: int = Field(default=8192, ge=256)  # address-space limit of a CPU model process
    hung_backoff_s: float = Field(default=30.0, ge=0, le=86_400)  # a version that hung reloads after
    # LoRA adapter versions held beside one loaded base model instance on an inference worker
    # (least recently used evicted there, never one a batch is running with)
    max_adapters: int = Field(default=8, ge=1, le=1024)
    check_timeout_s: float = Field(default=60.0, gt=0, le=3600)  # an upload's check, wall clock
    check_memory_mb: int = Field(default=4096, ge=256)  # an upload's check, address space
    # where model checks (uploads, a fine-tune job's base model) run: `local` in the gateway's own
    # fenced children (needs torch / onnx / tokenizers installed here), `worker` on a worker asked
    # over Redis (the gateway waits check_timeout_s), `auto` local where the gateway can import
    # what the check needs, else a worker (service/checks.py)
    checks: Literal["auto", "local", "worker"] = "auto"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    # fine-tuning
    max_dataset_bytes: int = Field(default=256 << 20, gt=0)
    # classification labels must be below the model's classes, or below this when the head is new
    max_classes: int = Field(default=100_000, ge=2, le=100_000)
    trainer_lease_s: float = Field(default=30.0, ge=1, le=3600)
    trainer_renew_interval_s: float = Field(default=1.0, gt=0, le=60)
    trainer_reconcile_interval_s: float = Field(default=10.0, gt=0, le=3600)
    trainer_claim_idle_ms: int = Field(default=60_000, ge=100)
    # the fenced process that runs a job's model code (workers/finetune/fence.py; 0: no limit): address
    # space (not applied on a GPU), CPU seconds, largest file it writes, longest silence
    train_memory_mb: int = Field(default=16384, ge=0)
    train_cpu_s: int = Field(default=0, ge=0)
    train_file_mb: int = Field(default=16384, ge=1)
    train_silence_s: float = Field(default=900.0, gt=0, le=86_400)
    # the gateway's model check at job creation (dry run, freeze prefixes, a head to resize)
    finetune_check_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    finetune_check_memory_mb: int = Field(default=8192, ge=256)

    @model_validator(mode="after")
    def _refuse_weak_secrets_outside_dev(self) -> Settings:
        if self.env == "prod":
            if self.bootstrap_admin_key and len(self.bootstrap_admin_key) < 32:
                raise ValueError("KILN_BOOTSTRAP_ADMIN_KEY must be at least 32 characters in prod")
            if not self.database_url or not self.redis_url:
                raise ValueError("prod needs KILN_DATABASE_URL and KILN_REDIS_URL")
        return self

    @property
    def upload_check(self) -> FencedCheck:
        return FencedCheck(self.check_timeout_s, self.check_memory_mb << 20, self.fence, self.artifact_limits)

    @property
    def artifact_limits(self) -> ArtifactLimits:
        """The bounds uploads are validated and stored bundles loaded under (gateway and worker)."""
        return ArtifactLimits(
            max_unpacked_bytes=budget_from(
                self.max_upload_bytes, self.bundle_expansion_factor, self.max_unpacked_bytes
            ),
            max_members=self.max_bundle_members,
            max_ratio=self.max_bundle_ratio,
            max_parameters=self.max_model_parameters,
        )

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'kiln.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def redis_socket(self) -> Path:
        return (self.data_dir / "redis.sock").resolve()

    @cached_property
    def resolved_redis_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        return f"unix://{self.redis_socket}"
