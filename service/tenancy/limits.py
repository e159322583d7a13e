"""Limits of a tenant or a key: stored as JSON on the row, read with the key at authentication.

A field left out (or 0) is no limit. A key's limits apply on top of its tenant's.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_s: float = Field(default=0, ge=0, le=1e6, description="token-bucket refill, requests/s")
    burst: int = Field(default=0, ge=0, le=10**7, description="bucket size (default: max(1, rate))")
    max_concurrent: int = Field(default=0, ge=0, le=10**6, description="requests in flight at once")
    monthly_requests: int = Field(default=0, ge=0, le=10**15, description="admitted requests per month")
    monthly_compute_s: float = Field(default=0, ge=0, le=1e12, description="compute seconds per month")
    tokens_per_min: int = Field(
        default=0, ge=0, le=10**12, description="text generation: prompt + completion tokens per minute"
    )
    monthly_tokens: int = Field(
        default=0, ge=0, le=10**15, description="text generation: prompt + completion tokens per month"
    )

    @property
    def any(self) -> bool:
        return self.requests or self.tokens

    @property
    def requests(self) -> bool:
        """Whether a request limit is set (what service/tenancy/admission.py enforces)."""
        return bool(self.rate_per_s or self.max_concurrent or self.monthly_requests or self.monthly_compute_s)

    @property
    def tokens(self) -> bool:
        """Whether a token limit is set (text generation)."""
        return bool(self.tokens_per_min or self.monthly_tokens)

    @property
    def bucket(self) -> int:
        return self.burst or max(1, int(self.rate_per_s + 0.999))

    @classmethod
    def from_row(cls, raw: dict[str, Any] | None) -> Limits | None:
        if not raw:
            return None
        limits = cls.model_validate(raw)
        return limits if limits.any else None
