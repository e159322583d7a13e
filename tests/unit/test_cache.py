from __future__ import annotations

import asyncio

import pytest

from service import cache as cache_mod
from service.cache import AsyncTTLCache


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(cache_mod.time, "monotonic", c)
    return c


class Loader:
    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.fail = False

    async def __call__(self) -> int:
        self.calls += 1
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("db down")
        return self.calls


async def test_concurrent_misses_share_one_load(clock: Clock) -> None:
    cache: AsyncTTLCache[int] = AsyncTTLCache(ttl_s=2)
    load = Loader()
    tasks = [asyncio.create_task(cache.get("k", load)) for _ in range(50)]
    await asyncio.sleep(0)
    load.gate.set()
    assert await asyncio.gather(*tasks) == [1] * 50
    assert load.calls == 1


async def test_expired_entry_is_served_stale_while_one_refresh_runs(clock: Clock) -> None:
    cache: AsyncTTLCache[int] = AsyncTTLCache(ttl_s=2, max_stale_s=10)
    load = Loader()
    load.gate.set()
    assert await cache.get("k", load) == 1
    clock.t += 3  # expired, still within the stale window
    load.gate.clear()
    assert [await cache.get("k", load) for _ in range(5)] == [1] * 5
    await asyncio.sleep(0)
    assert load.calls == 2  # one refresh started, not five
    load.gate.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert await cache.get("k", load) == 2


async def test_failures_are_not_cached_and_too_stale_entries_are_not_served(clock: Clock) -> None:
    cache: AsyncTTLCache[int] = AsyncTTLCache(ttl_s=1, max_stale_s=1)
    load = Loader()
    load.gate.set()
    load.fail = True
    with pytest.raises(RuntimeError):
        await cache.get("k", load)
    load.fail = False
    assert await cache.get("k", load) == 2
    clock.t += 5  # past the stale window: the caller waits for a fresh value
    assert await cache.get("k", load) == 3
