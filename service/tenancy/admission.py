"""Admission: model allowlist, per-key and per-tenant rate limits (token buckets), concurrency
and monthly quotas, decided by one atomic Lua script in Redis (one round trip per request, none
when neither the key nor its tenant has a limit).

Redis keys (named in workers/contract/redis_keys.py), per key (k) and per tenant (t):
    RedisKeys.rate_bucket   token bucket (hash: tk = tokens, ts = ms of the last refill)
    RedisKeys.in_flight     requests in flight (sorted set: request id -> deadline ms)
    RedisKeys.quota_month   monthly counters (r: admitted requests, c: compute seconds,
                            written by the workers, see workers/contract/usage.py)
An in-flight entry is removed when the request finishes, and in any case at its deadline, so a
gateway that dies never leaks concurrency.
"""

from __future__ import annotations

import calendar
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from service import ops_metrics
from service.errors import RateLimited, Unavailable
from service.tenancy.api_keys import Principal
from service.tenancy.limits import Limits
from workers.contract.redis_conn import connect_async
from workers.contract.redis_keys import RedisKeys
from workers.contract.usage import MONTH_TTL_S

log = logging.getLogger("kiln.admission")

_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, rid, deadline = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local month_ttl, month_reset_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens = {}
local limit, remaining, reset = -1, -1, 0
for i = 1, n do
  local o = 5 + (i - 1) * 5
  local rate, burst, maxc = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  local mreq, mcomp = tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])
  local kb, kc, km = KEYS[(i - 1) * 3 + 1], KEYS[(i - 1) * 3 + 2], KEYS[(i - 1) * 3 + 3]
  if maxc > 0 then
    redis.call('ZREMRANGEBYSCORE', kc, '-inf', now)
    if redis.call('ZCARD', kc) >= maxc then
      return {0, 'concurrency', tostring(maxc), 0, 1000}
    end
  end
  if mreq > 0 or mcomp > 0 then
    local m = redis.call('HMGET', km, 'r', 'c')
    if mreq > 0 and (tonumber(m[1]) or 0) >= mreq then
      return {0, 'monthly_requests', tostring(mreq), 0, month_reset_ms}
    end
    if mcomp > 0 and (tonumber(m[2]) or 0) >= mcomp then
      return {0, 'monthly_compute', tostring(mcomp), 0, month_reset_ms}
    end
  end
  if rate > 0 then
    local b = redis.call('HMGET', kb, 'tk', 'ts')
    local tk = tonumber(b[1]) or burst
    local ts = tonumber(b[2]) or now
    tk = math.min(burst, tk + math.max(0, now - ts) * rate / 1000)
    if tk < 1 then
      return {0, 'rate', tostring(burst), 0, math.ceil((1 - tk) * 1000 / rate)}
    end
    tokens[i] = tk
  end
end
for i = 1, n do
  local o = 5 + (i - 1) * 5
  local rate, burst, maxc = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  local mreq, mcomp = tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])
  local kb, kc, km = KEYS[(i - 1) * 3 + 1], KEYS[(i - 1) * 3 + 2], KEYS[(i - 1) * 3 + 3]
  if rate > 0 then
    local left = tokens[i] - 1
    redis.call('HSET', kb, 'tk', tostring(left), 'ts', now)
    redis.call('PEXPIRE', kb, math.ceil(burst * 1000 / rate) + 1000)
    if remaining < 0 or left < remaining then
      limit, remaining = burst, math.floor(left)
      reset = math.ceil((burst - left) * 1000 / rate)
    end
  end
  if maxc > 0 then
    redis.call('ZADD', kc, deadline, rid)
    redis.call('PEXPIRE', kc, math.max(deadline - now, 0) + 1000)
  end
  if mreq > 0 or mcomp > 0 then
    redis.call('HINCRBY', km, 'r', 1)
    redis.call('EXPIRE', km, month_ttl)
  end
end
return {1, 'ok', tostring(limit), remaining, reset}
"""

_KIND_MESSAGES = {
    "rate": "rate limit exceeded",
    "concurrency": "too many concurrent requests",
    "monthly_requests": "monthly request quota exhausted",
    "monthly_compute": "monthly compute quota exhausted",
}


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted request: what to release when it finishes."""

    request_id: str
    inflight_keys: tuple[str, ...]


def seconds_to_month_end(now: float) -> float:
    t = time.gmtime(now)
    last = calendar.monthrange(t.tm_year, t.tm_mon)[1]
    end = calendar.timegm((t.tm_year, t.tm_mon, last, 23, 59, 59)) + 1
    return max(1.0, end - now)


class Admission:
    def __init__(self, redis: Any, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._script = redis.register_script(_ADMIT)
        self._refused: dict[int, tuple[float, str, str]] = {}  # key id -> (until, kind, limit)

    @classmethod
    def from_url(cls, url: str, keys: RedisKeys) -> Admission:
        """Its own blocking pool: a burst of requests waits for a connection, never fails."""
        return cls(connect_async(url, max_connections=64, wait_s=5), keys)

    @property
    def redis(self) -> Any:
        """The limiter's client (the token limits share it: service/tenancy/token_limits.py)."""
        return self._redis

    async def close(self) -> None:
        await self._redis.aclose()

    async def admit(self, principal: Principal, deadline_s: float) -> Ticket | None:
        """A ticket to release when the request ends (None: nothing to release), or RateLimited;
        every refusal counts in kiln_rate_limited_requests_total{tenant}."""
        try:
            return await self._admit(principal, deadline_s)
        except RateLimited:
            ops_metrics.rate_limited(principal.tenant_id)
            raise

    async def _admit(self, principal: Principal, deadline_s: float) -> Ticket | None:
        scopes = [
            (kind, ident, limits)
            for kind, ident, limits in (
                ("k", principal.key_id, principal.key_limits),
                ("t", principal.tenant_id, principal.tenant_limits),
            )
            if limits is not None and limits.requests
        ]
        if not scopes:
            return None
        self._refuse_if_recently_refused(principal.key_id)
        now = time.time()
        request_id = uuid.uuid4().hex
        keys, args = self._arguments(scopes, now)
        args[1:3] = [request_id, int((now + deadline_s) * 1000)]
        try:
            ok, kind, limit, _remaining, reset_ms = await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise Unavailable("rate limiter is unavailable", retry_after=1) from exc
        if not int(ok):
            self._remember_refusal(principal.key_id, _text(kind), _text(limit), int(reset_ms))
            raise _limited(_text(kind), _text(limit), int(reset_ms))
        inflight = tuple(keys[i * 3 + 1] for i, (_k, _i, lim) in enumerate(scopes) if lim.max_concurrent)
        return Ticket(request_id, inflight)

    def _refuse_if_recently_refused(self, key_id: int) -> None:
        """A key refused for its rate or a monthly quota stays refused until the reset the
        script reported (at most 1 s): answered here, without a Redis round trip, so a flooding
        key costs the gateway and Redis little. Concurrency refusals are not remembered: they
        clear as soon as one of the key's requests finishes."""
        refused = self._refused.get(key_id)
        if refused is None:
            return
        until, kind, limit = refused
        left_ms = int((until - time.monotonic()) * 1000)
        if left_ms > 0:
            raise _limited(kind, limit, left_ms)
        self._refused.pop(key_id, None)

    def _remember_refusal(self, key_id: int, kind: str, limit: str, reset_ms: int) -> None:
        if kind == "concurrency":
            return
        if len(self._refused) >= 100_000:
            self._refused.clear()
        self._refused[key_id] = (time.monotonic() + min(reset_ms, 1000) / 1000, kind, limit)

    def _arguments(self, scopes: list[tuple[str, int, Limits]], now: float) -> tuple[list[str], list[Any]]:
        month = time.strftime("%Y%m", time.gmtime(now))
        keys: list[str] = []
        args: list[Any] = [len(scopes), "", 0, MONTH_TTL_S, int(seconds_to_month_end(now) * 1000)]
        for kind, ident, lim in scopes:
            rk = self._keys
            keys += [
                rk.rate_bucket(kind, ident),
                rk.in_flight(kind, ident),
                rk.quota_month(kind, ident, month),
            ]
            args += [
                lim.rate_per_s,
                lim.bucket,
                lim.max_concurrent,
                lim.monthly_requests,
                lim.monthly_compute_s,
            ]
        return keys, args

    async def release(self, ticket: Ticket | None) -> None:
        if ticket is None or not ticket.inflight_keys:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in ticket.inflight_keys:
                    pipe.zrem(key, ticket.request_id)
                await pipe.execute()
        except (RedisError, OSError):  # the entry expires at the request's deadline anyway
            log.warning("could not release a concurrency slot")


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _limited(kind: str, limit: str, reset_ms: int) -> RateLimited:
    reset_s = max(1, -(-reset_ms // 1000))
    return RateLimited(
        _KIND_MESSAGES.get(kind, "limit exceeded"),
        headers={
            "Retry-After": str(reset_s),
            "X-RateLimit-Limit": limit,
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset_s),
        },
    )
