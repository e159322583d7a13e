"""The gateway remembers a key's rate or quota refusal until the reset the limiter reported
(at most 1 s), so a flooding key is answered without a Redis round trip."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from service.errors import RateLimited
from service.tenancy import admission as admission_mod
from service.tenancy.admission import Admission
from tests.conftest import REDIS_URL
from workers.contract.redis_keys import RedisKeys


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(admission_mod.time, "monotonic", c)
    return c


async def test_rate_refusal_is_remembered_until_its_reset(clock: Clock) -> None:
    adm = Admission(aioredis.from_url(REDIS_URL), RedisKeys("unused"))
    adm._refuse_if_recently_refused(7)  # nothing remembered: no error
    adm._remember_refusal(7, "rate", "5", 400)
    with pytest.raises(RateLimited) as exc:
        adm._refuse_if_recently_refused(7)
    assert exc.value.headers["X-RateLimit-Limit"] == "5"
    assert exc.value.headers["Retry-After"] == "1"
    adm._refuse_if_recently_refused(8)  # another key is not affected
    clock.t += 0.5  # past the reset: asked of the limiter again
    adm._refuse_if_recently_refused(7)
    await adm.close()


async def test_long_resets_are_capped_and_concurrency_is_not_remembered(clock: Clock) -> None:
    adm = Admission(aioredis.from_url(REDIS_URL), RedisKeys("unused"))
    adm._remember_refusal(1, "monthly_requests", "100", 86_400_000)
    clock.t += 1.01  # at most 1 s: a raised quota shows quickly
    adm._refuse_if_recently_refused(1)
    adm._remember_refusal(2, "concurrency", "4", 1000)
    adm._refuse_if_recently_refused(2)
    await adm.close()
