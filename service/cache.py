"""A small async TTL cache for the hot path: single-flight loads and stale-while-revalidate.

On a miss, concurrent callers share one load. When an entry expires, callers keep getting the
old value while one background refresh runs, so an expiry never stalls the request path or
sends a burst of identical queries to the database. Failures are not cached: the next caller
retries (and a failed refresh keeps serving the old value until it is `max_stale_s` old).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

V = TypeVar("V")


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    fresh_until: float
    stale_until: float


class AsyncTTLCache(Generic[V]):
    def __init__(
        self,
        ttl_s: float,
        max_entries: int = 10_000,
        max_stale_s: float = 30.0,
        evict_on: tuple[type[BaseException], ...] = (),
    ) -> None:
        """`evict_on`: failures that are answers, not outages (say NotFound after a model stops
        being shared): they drop the stale entry at once instead of serving it on."""
        self.ttl_s = ttl_s
        self.evict_on = evict_on
        self.max_stale_s = max(max_stale_s, ttl_s)
        self.max_entries = max_entries
        self._entries: dict[Hashable, _Entry[V]] = {}
        self._loading: dict[Hashable, asyncio.Future[V]] = {}

    async def get(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None:
            if now < entry.fresh_until:
                return entry.value
            if now < entry.stale_until:
                if key not in self._loading:
                    self._start(key, load)
                    self._loading[key].add_done_callback(_swallow)
                return entry.value
        fut = self._loading.get(key) or self._start(key, load)
        return await asyncio.shield(fut)

    def invalidate(self, match: Callable[[Hashable], bool]) -> None:
        for key in [k for k in self._entries if match(k)]:
            del self._entries[key]

    def _start(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> asyncio.Future[V]:
        fut: asyncio.Future[V] = asyncio.ensure_future(self._load(key, load))
        self._loading[key] = fut
        return fut

    async def _load(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await load()
            now = time.monotonic()
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = _Entry(value, now + self.ttl_s, now + self.ttl_s + self.max_stale_s)
            return value
        except self.evict_on:
            self._entries.pop(key, None)
            raise
        finally:
            self._loading.pop(key, None)


def _swallow(fut: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        fut.exception()
