"""Per-request serving policy from the version's config, the request's parameters and the
caller's key: priority level (and so the stream), queue bound, timeout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model_store.registry import ResolvedVersion
from service.errors import InvalidInput
from service.inference.oip import request_timeout_s
from service.settings import Settings
from service.tenancy.api_keys import Principal
from workers.contract.redis_keys import RedisKeys


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    stream: str
    priority: int  # 0 when the version has no priority levels; else 1 (highest) .. levels
    timeout_s: float
    bound: tuple[list[str], int] | None  # (the version's streams, max_queue_size)


def _requested_priority(params: dict[str, Any]) -> int:
    raw = params.get("priority", 0)
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise InvalidInput("parameter 'priority' must be a non-negative integer")
    return raw


def request_policy(
    version: ResolvedVersion,
    params: dict[str, Any],
    principal: Principal,
    keys: RedisKeys,
    settings: Settings,
) -> RequestPolicy:
    cfg = version.config
    requested = _requested_priority(params)
    priority = 0
    if cfg.priority_levels > 1:
        try:
            priority = cfg.priority_level(requested, principal.priority_cap)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
    elif requested > 1:
        raise InvalidInput("this model version has one priority level")
    default_s = cfg.default_timeout_ms / 1000 or settings.request_timeout_s
    bound = None
    if cfg.max_queue_size:
        bound = (keys.request_streams(version.version_id, cfg.priority_levels), cfg.max_queue_size)
    return RequestPolicy(
        stream=keys.request_stream(version.version_id, priority),
        priority=priority,
        timeout_s=request_timeout_s(params, default_s, settings.request_timeout_s),
        bound=bound,
    )
