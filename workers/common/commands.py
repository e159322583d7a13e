"""The gateway's load/unload commands for model versions (the repository API leaves them in
Redis: one hash, version id -> "load:<nonce>" | "unload:<nonce>"), read by every worker kind
that holds versions (inference, generation) on its refresh."""

from __future__ import annotations

from typing import Any

import redis

from workers.contract.redis_keys import RedisKeys


class Commands:
    """The gateway's load/unload commands, read by every worker on its refresh."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.r = client
        self.key = keys.lifecycle
        self._seen: dict[int, str] = {}
        self.unloaded: set[int] = set()

    def new(self) -> list[tuple[int, str]]:
        """Commands not handled yet, as (version id, "load" | "unload")."""
        raw: Any = self.r.hgetall(self.key)
        out: list[tuple[int, str]] = []
        for k, v in (raw or {}).items():
            vid, cmd = int(k), v.decode()
            if self._seen.get(vid) == cmd:
                continue
            self._seen[vid] = cmd
            action = cmd.split(":", 1)[0]
            if action == "unload":
                self.unloaded.add(vid)
            else:
                self.unloaded.discard(vid)
            out.append((vid, action))
        return out
