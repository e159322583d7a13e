"""Usage metering, shared by workers (which write it) and gateways (which read it and enforce
monthly quotas). Part of the contract between the two, like the stream key names.

Each executed batch's compute time is divided among its requests by item count and charged to
the request's tenant and key, in Redis hashes written in the same pipeline as the replies
(key names: RedisKeys.usage_day, RedisKeys.quota_month):

    {prefix}:usage:{tenant_id}:{YYYYMMDD}        field "{model}|{version}|{key_id}|{r|i|c}"
    {prefix}:quota:t:{tenant_id}:{YYYYMM}        field "c" (compute s), "r" (admitted requests)
    {prefix}:quota:k:{key_id}:{YYYYMM}           the same per key

Text generation charges tokens instead (`record_tokens`): day-hash fields
"{model}|{version}|{key_id}|{r|p|g}" (requests, prompt tokens, generated tokens) and field "tok"
(prompt + generated) in the month hashes, which `monthly_tokens` limits read.

Days and months are UTC. Day hashes expire after USAGE_TTL_S, month hashes after MONTH_TTL_S.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from workers.contract.redis_keys import RedisKeys

USAGE_TTL_S = 400 * 86400
MONTH_TTL_S = 40 * 86400
FIELD_SEP = "|"
OTHER = "other"


@dataclass(frozen=True, slots=True)
class Charge:
    tenant_id: int
    key_id: int
    model: str
    version: int
    items: int
    compute_s: float


def day_of(ts: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(ts))


def month_of(ts: float) -> str:
    return time.strftime("%Y%m", time.gmtime(ts))


def split_compute(
    model: str, version: int, requests: list[tuple[int, int, int]], compute_s: float
) -> list[Charge]:
    """One charge per request (tenant_id, key_id, items): compute_s divided by item count."""
    total = sum(items for _t, _k, items in requests) or 1
    return [
        Charge(tenant, key, model, version, items, compute_s * items / total)
        for tenant, key, items in requests
    ]


def record(pipe: Any, prefix: str, charges: list[Charge], now: float | None = None) -> None:
    """Queue the HINCRBY/HINCRBYFLOAT commands for these charges on a pipeline (no round trip)."""
    if not charges:
        return
    now = time.time() if now is None else now
    day, month = day_of(now), month_of(now)
    keys = RedisKeys(prefix)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    for c in charges:
        base = FIELD_SEP.join((c.model, str(c.version), str(c.key_id)))
        dkey = keys.usage_day(c.tenant_id, day)
        counts[(dkey, base + "|r")] += 1
        counts[(dkey, base + "|i")] += c.items
        seconds[(dkey, base + "|c")] += c.compute_s
        seconds[(keys.quota_month("t", c.tenant_id, month), "c")] += c.compute_s
        if c.key_id:
            seconds[(keys.quota_month("k", c.key_id, month), "c")] += c.compute_s
    for (key, field), n in counts.items():
        pipe.hincrby(key, field, n)
    for (key, field), s in seconds.items():
        pipe.hincrbyfloat(key, field, s)
    for key in {k for k, _f in counts} | {k for k, _f in seconds}:
        pipe.expire(key, MONTH_TTL_S if ":quota:" in key else USAGE_TTL_S)


@dataclass(frozen=True, slots=True)
class TokenCharge:
    tenant_id: int
    key_id: int
    model: str
    version: int
    prompt_tokens: int
    completion_tokens: int


TOKENS_FIELD = "tok"  # the month hashes' token total


def record_tokens(pipe: Any, prefix: str, charges: list[TokenCharge], now: float | None = None) -> None:
    """Queue the HINCRBY commands for these generation charges on a pipeline (no round trip)."""
    if not charges:
        return
    now = time.time() if now is None else now
    day, month = day_of(now), month_of(now)
    keys = RedisKeys(prefix)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for c in charges:
        base = FIELD_SEP.join((c.model, str(c.version), str(c.key_id)))
        dkey = keys.usage_day(c.tenant_id, day)
        counts[(dkey, base + "|r")] += 1
        counts[(dkey, base + "|p")] += c.prompt_tokens
        counts[(dkey, base + "|g")] += c.completion_tokens
        total = c.prompt_tokens + c.completion_tokens
        counts[(keys.quota_month("t", c.tenant_id, month), TOKENS_FIELD)] += total
        if c.key_id:
            counts[(keys.quota_month("k", c.key_id, month), TOKENS_FIELD)] += total
    for (key, field), n in counts.items():
        pipe.hincrby(key, field, n)
    for key in {k for k, _f in counts}:
        pipe.expire(key, MONTH_TTL_S if ":quota:" in key else USAGE_TTL_S)


def parse_field(field: str) -> tuple[str, int, int, str] | None:
    """(model, version, key_id, metric) of a day-hash field."""
    parts = field.rsplit(FIELD_SEP, 3)
    if len(parts) != 4:
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2]), parts[3]
    except ValueError:
        return None


class TenantLabels:
    """Bounded Prometheus label values: the first `limit` tenants seen keep their own label,
    later ones fold into "other" (per process)."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, tenant_id: int | str) -> str:
        label = str(tenant_id)
        if label in self._seen:
            return label
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(label)
        return label
