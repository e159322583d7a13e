"""Version resolution for the hot path, cached for a few seconds (alias moves show within TTL)."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool

from model_store.names import parse_version_ref
from model_store.registry import Registry, ResolvedVersion

_MAX_CACHE = 10_000


class VersionResolver:
    def __init__(self, registry: Registry, ttl_s: float) -> None:
        self._registry = registry
        self._ttl = ttl_s
        self._cache: dict[tuple[int, str, str | None], tuple[float, ResolvedVersion]] = {}

    async def resolve(self, tenant_id: int, model: str, ref: str | None) -> ResolvedVersion:
        key = (tenant_id, model, ref)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        parsed = parse_version_ref(ref) if ref is not None else None
        version = await run_in_threadpool(self._registry.resolve, tenant_id, model, parsed)
        if len(self._cache) >= _MAX_CACHE:
            self._cache.clear()
        self._cache[key] = (now + self._ttl, version)
        return version
