"""All settings in one pydantic-settings class (environment prefix KILN_), validated at start."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    max_body_bytes: int = Field(default=64 << 20, gt=0)
    max_upload_bytes: int = Field(default=2 << 30, gt=0)
    max_tensor_elements: int = Field(default=1 << 26, gt=0)
    key_cache_ttl_s: float = Field(default=2.0, ge=0, le=60)
    version_cache_ttl_s: float = Field(default=2.0, ge=0, le=60)
    docs_enabled: bool = True
    async_result_ttl_s: int = Field(default=3600, ge=10, le=7 * 86400)  # results of respond-async

    # tenants
    key_rotation_overlap_s: int = Field(default=86_400, ge=0, le=90 * 86_400)
    metrics_max_tenants: int = Field(default=100, ge=1, le=10_000)

    # workers
    worker_read_count: int = Field(default=64, ge=1, le=4096)
    claim_idle_ms: int = Field(default=5_000, ge=100)  # entries idle this long: their worker is gone
    claim_interval_ms: int = Field(default=1_000, ge=50)
    max_deliveries: int = Field(default=3, ge=1, le=100)
    heartbeat_ttl_s: float = Field(default=5.0, gt=0)
    reply_ttl_s: int = Field(default=300, ge=10)
    worker_memory_budget_mb: int = Field(default=0, ge=0)  # 0: unlimited; else LRU unloading

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    # fine-tuning
    max_dataset_bytes: int = Field(default=256 << 20, gt=0)
    trainer_lease_s: float = Field(default=30.0, ge=1, le=3600)
    trainer_renew_interval_s: float = Field(default=1.0, gt=0, le=60)
    trainer_reconcile_interval_s: float = Field(default=10.0, gt=0, le=3600)
    trainer_claim_idle_ms: int = Field(default=60_000, ge=100)
    # the fenced process that runs a job's model code (workers/ft_fence.py; 0: no limit): address
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
