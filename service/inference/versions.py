"""Version resolution for the hot path, cached for a few seconds (alias moves show within TTL)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from model_store import errors as store_errors
from model_store.names import parse_version_ref
from model_store.registry import Registry, ResolvedVersion
from service.cache import AsyncTTLCache


class VersionResolver:
    def __init__(self, registry: Registry, ttl_s: float) -> None:
        self._registry = registry
        self._cache: AsyncTTLCache[ResolvedVersion] = AsyncTTLCache(
            ttl_s, 10_000, max_stale_s=30.0, evict_on=(store_errors.NotFound,)
        )

    def forget_model(self, tenant_id: int, model: str) -> None:
        """Drop this process's cached resolutions of a model (after an alias or version change)."""
        self._cache.invalidate(lambda key: key[:2] == (tenant_id, model))  # type: ignore[index]

    async def resolve(self, tenant_id: int, model: str, ref: str | None) -> ResolvedVersion:
        parsed = parse_version_ref(ref) if ref is not None else None
        return await self._cache.get(
            (tenant_id, model, ref),
            lambda: run_in_threadpool(self._registry.resolve, tenant_id, model, parsed),
        )

    async def by_id(self, version_id: int) -> ResolvedVersion:
        """A version by its id, with no visibility check (the caller has resolved something that
        names it, e.g. a lora-adapter's base), cached like resolutions (NotFound drops it at once)."""
        return await self._cache.get(
            ("id", version_id), lambda: run_in_threadpool(self._registry.by_version_id, version_id)
        )
