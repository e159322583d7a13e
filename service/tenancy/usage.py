"""Usage reports: read the per-day hashes the workers write (workers/contract/usage.py) and group them."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

from service.errors import InvalidInput, from_engine
from service.tenancy.access_schemas import UsageReport, UsageRow
from workers.contract.errors import EngineError
from workers.contract.messages import EngineClient
from workers.contract.usage import parse_field

MAX_DAYS = 366
_METRICS = {
    "r": "requests",
    "i": "items",
    "c": "compute_s",
    "p": "prompt_tokens",
    "g": "completion_tokens",
}


def days_between(start: date, end: date) -> list[date]:
    if end < start:
        raise InvalidInput("'from' must not be after 'to'")
    n = (end - start).days + 1
    if n > MAX_DAYS:
        raise InvalidInput(f"at most {MAX_DAYS} days per report")
    return [start + timedelta(days=i) for i in range(n)]


def _group(group_by: str, day: date, model: str, key_id: int) -> tuple[Any, ...]:
    if group_by == "model":
        return (model, None, None)
    if group_by == "key":
        return (None, key_id, None)
    return (None, None, day)


async def report(
    engine: EngineClient, tenant_id: int, start: date | None, end: date | None, group_by: str
) -> UsageReport:
    """The tenant's usage from `start` (default: the first of `end`'s month) to `end` (default:
    today, UTC), grouped by model, key or day."""
    end = end or datetime.now(UTC).date()
    start = start or end.replace(day=1)
    days = days_between(start, end)
    try:
        hashes = await engine.usage_days(tenant_id, [d.strftime("%Y%m%d") for d in days])
    except EngineError as exc:
        raise from_engine(exc) from exc
    sums: dict[tuple[Any, ...], dict[str, float]] = defaultdict(lambda: dict.fromkeys(_METRICS.values(), 0.0))
    for d, fields in zip(days, hashes, strict=True):
        for raw_field, raw_value in fields.items():
            parsed = parse_field(raw_field.decode() if isinstance(raw_field, bytes) else raw_field)
            if parsed is None or parsed[3] not in _METRICS:
                continue
            model, _version, key_id, metric = parsed
            sums[_group(group_by, d, model, key_id)][_METRICS[metric]] += float(raw_value)
    rows = [_row(group, totals) for group, totals in sorted(sums.items(), key=lambda kv: str(kv[0]))]
    total = _row((None, None, None), {m: sum(r[m] for r in sums.values()) for m in _METRICS.values()})
    return UsageReport.model_validate(
        {"from": start, "to": end, "group_by": group_by, "data": rows, "total": total}
    )


def _row(group: tuple[Any, ...], totals: dict[str, float]) -> UsageRow:
    model, key_id, day = group
    return UsageRow(
        model=model,
        key_id=key_id,
        day=day,
        requests=int(totals["requests"]),
        items=int(totals["items"]),
        compute_s=totals["compute_s"],
        prompt_tokens=int(totals["prompt_tokens"]),
        completion_tokens=int(totals["completion_tokens"]),
    )
