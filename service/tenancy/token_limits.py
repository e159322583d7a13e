"""Token limits of text generation (Limits.tokens_per_min, Limits.monthly_tokens), per key (k)
and per tenant (t), in Redis beside the request limits (service/tenancy/admission.py):

- tokens_per_min: a token bucket that may go into debt. A request is admitted while the bucket
  is not in debt (its cost is not known in advance); its actual prompt + completion tokens are
  debited when its last chunk arrives. While in debt the key is refused with 429 and a
  Retry-After of the time the bucket takes to climb back to zero.
  Key RedisKeys.rate_bucket("ktok" | "ttok", id): hash tk (tokens, may be negative), ts (ms).
- monthly_tokens: against field "tok" of the month hash (RedisKeys.quota_month), which the
  generation workers increment (workers/contract/usage.py::record_tokens).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from redis.exceptions import RedisError

from service.errors import RateLimited, Unavailable
from service.tenancy.admission import seconds_to_month_end
from service.tenancy.api_keys import Principal
from service.tenancy.limits import Limits
from workers.contract.redis_keys import RedisKeys
from workers.contract.usage import TOKENS_FIELD

# KEYS: per scope (bucket, month); ARGV: n, then per scope (per_min, monthly). Returns
# {1} or {0, kind, limit, retry_ms}
_CHECK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, tonumber(ARGV[1]) do
  local per_min, monthly = tonumber(ARGV[i * 2]), tonumber(ARGV[i * 2 + 1])
  local kb, km = KEYS[i * 2 - 1], KEYS[i * 2]
  if monthly > 0 and (tonumber(redis.call('HGET', km, 'FIELD')) or 0) >= monthly then
    return {0, 'monthly_tokens', tostring(monthly), -1}
  end
  if per_min > 0 then
    local b = redis.call('HMGET', kb, 'tk', 'ts')
    local tk = tonumber(b[1]) or per_min
    local ts = tonumber(b[2]) or now
    tk = math.min(per_min, tk + math.max(0, now - ts) * per_min / 60000)
    if tk < 0 then
      return {0, 'tokens_per_min', tostring(per_min), math.ceil(-tk * 60000 / per_min)}
    end
  end
end
return {1}
""".replace("FIELD", TOKENS_FIELD)

# KEYS: buckets; ARGV: tokens, then each bucket's per_min
_DEBIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
for i = 1, #KEYS do
  local per_min = tonumber(ARGV[i + 1])
  local b = redis.call('HMGET', KEYS[i], 'tk', 'ts')
  local tk = tonumber(b[1]) or per_min
  local ts = tonumber(b[2]) or now
  tk = math.min(per_min, tk + math.max(0, now - ts) * per_min / 60000) - n
  redis.call('HSET', KEYS[i], 'tk', tostring(tk), 'ts', now)
  local full_ms = math.ceil((per_min - tk) * 60000 / per_min)
  redis.call('PEXPIRE', KEYS[i], full_ms + 1000)
end
return 1
"""

_MESSAGES = {
    "tokens_per_min": "token rate limit exceeded (tokens per minute)",
    "monthly_tokens": "monthly token quota exhausted",
}


def _scopes(principal: Principal) -> list[tuple[str, int, Limits]]:
    return [
        (kind, ident, limits)
        for kind, ident, limits in (
            ("k", principal.key_id, principal.key_limits),
            ("t", principal.tenant_id, principal.tenant_limits),
        )
        if limits is not None and limits.tokens
    ]


class TokenLimiter:
    """Check before a generation, debit after it. Uses the rate limiter's Redis client."""

    def __init__(self, redis: Any, keys: RedisKeys) -> None:
        self._keys = keys
        self._check = redis.register_script(_CHECK)
        self._debit = redis.register_script(_DEBIT)

    async def check(self, principal: Principal) -> None:
        """RateLimited (429 + Retry-After) while a bucket is in debt or a month is used up."""
        scopes = _scopes(principal)
        if not scopes:
            return
        now = time.time()
        month = time.strftime("%Y%m", time.gmtime(now))
        keys: list[str] = []
        args: list[Any] = [len(scopes)]
        for kind, ident, lim in scopes:
            keys += [self._keys.rate_bucket(f"{kind}tok", ident), self._keys.quota_month(kind, ident, month)]
            args += [lim.tokens_per_min, lim.monthly_tokens]
        try:
            result = await self._check(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise Unavailable("rate limiter is unavailable", retry_after=1) from exc
        if int(result[0]):
            return
        kind = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
        limit = result[2].decode() if isinstance(result[2], bytes) else str(result[2])
        retry_ms = int(result[3])
        retry_s = seconds_to_month_end(now) if retry_ms < 0 else max(1, -(-retry_ms // 1000))
        raise RateLimited(
            _MESSAGES.get(kind, "token limit exceeded"),
            retry_after=retry_s,
            headers={"X-RateLimit-Limit-Tokens": limit, "X-RateLimit-Remaining-Tokens": "0"},
        )

    async def debit(self, principal: Principal, tokens: int) -> None:
        """Take a finished generation's tokens from its buckets (best effort: never raises)."""
        buckets = [(k, i, lim) for k, i, lim in _scopes(principal) if lim.tokens_per_min]
        if not buckets or tokens <= 0:
            return
        keys = [self._keys.rate_bucket(f"{kind}tok", ident) for kind, ident, _l in buckets]
        # on failure the bucket stays fuller than it should: the next requests are not refused
        with contextlib.suppress(RedisError, OSError):
            await self._debit(keys=keys, args=[tokens, *(lim.tokens_per_min for _k, _i, lim in buckets)])
