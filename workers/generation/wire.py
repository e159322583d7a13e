"""Generation events and stats as JSON on the fence's channel (model_store.channel). The worker
decodes what the child sends with these functions only, and checks every field: the child runs
tenant model code and is not trusted either."""

from __future__ import annotations

from typing import Any

from workers.contract.generation import FINISH_REASONS, GenUsage
from workers.generation.backend import GenEvent, GenStats

MAX_EVENTS = 65_536  # in one frame


class WireError(ValueError):
    """A frame from the child that is not what the protocol says."""


def event_to_json(e: GenEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"id": e.request_id, "i": e.index, "t": e.text, "n": e.tokens}
    if e.finish is not None:
        out["finish"] = e.finish
    if e.done:
        out["done"] = True
    if e.usage is not None:
        out["usage"] = e.usage.to_json()
    if e.code or e.error:
        out["code"], out["error"] = e.code, e.error
    if e.first_token:
        out["first"] = True
    return out


def _int(d: dict[str, Any], key: str, default: int = 0) -> int:
    v = d.get(key, default)
    if type(v) is not int or v < 0:
        raise WireError(f"event field {key!r} is not a non-negative integer")
    return v


def _str(d: dict[str, Any], key: str, limit: int) -> str:
    v = d.get(key, "")
    if not isinstance(v, str) or len(v) > limit:
        raise WireError(f"event field {key!r} is not a string of at most {limit} characters")
    return v


def event_from_json(d: Any) -> GenEvent:
    if not isinstance(d, dict):
        raise WireError("an event is not an object")
    finish = d.get("finish")
    if finish is not None and finish not in FINISH_REASONS:
        raise WireError("an event has an unknown finish reason")
    usage = d.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            raise WireError("an event's usage is not an object")
        usage = GenUsage(_int(usage, "prompt_tokens"), _int(usage, "completion_tokens"))
    return GenEvent(
        request_id=_str(d, "id", 256),
        index=_int(d, "i"),
        text=_str(d, "t", 1 << 20),
        tokens=_int(d, "n"),
        finish=finish,
        done=d.get("done") is True,
        usage=usage,
        code=_str(d, "code", 64),
        error=_str(d, "error", 1000),
        first_token=d.get("first") is True,
    )


def events_from_json(items: Any) -> list[GenEvent]:
    if not isinstance(items, list) or len(items) > MAX_EVENTS:
        raise WireError("events are not a list of bounded length")
    return [event_from_json(d) for d in items]


ADAPTER_STATS = ("adapters", "adapter_loads", "adapter_evictions")


def stats_to_json(s: GenStats) -> dict[str, Any]:
    out: dict[str, Any] = {"running": s.running, "waiting": s.waiting, "kv": s.kv_cache_usage}
    extra = {k: int(s.extra[k]) for k in ADAPTER_STATS if k in s.extra}
    return {**out, "extra": extra} if extra else out


def stats_from_json(d: Any) -> GenStats:
    if not isinstance(d, dict):
        raise WireError("stats are not an object")
    kv = d.get("kv", 0.0)
    if not isinstance(kv, int | float) or not 0.0 <= kv <= 1.0:
        raise WireError("stats: kv is not a share")
    extra = d.get("extra") or {}
    if not isinstance(extra, dict):
        raise WireError("stats: extra is not an object")
    return GenStats(
        running=_int(d, "running"),
        waiting=_int(d, "waiting"),
        kv_cache_usage=float(kv),
        extra={k: _int(extra, k) for k in ADAPTER_STATS if k in extra},
    )
