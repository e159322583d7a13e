"""Consumer groups on Redis streams, for every queue that has them (request streams, the
fine-tune job stream)."""

from __future__ import annotations

import redis
from redis.exceptions import ResponseError


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create the group reading the stream from its start (and the stream if missing); a group
    that already exists is left as it is."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def is_nogroup(exc: ResponseError) -> bool:
    """The group is gone: Redis restarted empty, or the stream was deleted."""
    return "NOGROUP" in str(exc)
