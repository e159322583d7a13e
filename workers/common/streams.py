"""A consumer in a Redis Streams consumer group (GROUP), shared by the worker kinds that read
request streams (workers/inference/queue.py, workers/generation/queue.py): reads, take-over of a
dead consumer's entries (XPENDING + XCLAIM, delivery counts kept), lease renewal, dead-lettering
and the worker heartbeat."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from redis.exceptions import ResponseError

from workers.contract.groups import ensure_group, is_nogroup
from workers.contract.redis_keys import GROUP, RedisKeys


@dataclass(slots=True)
class Entry:
    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes]
    deliveries: int = 1


class StreamConsumer:
    def __init__(self, client: redis.Redis, keys: RedisKeys, consumer: str, reply_ttl_s: int) -> None:
        self.r = client
        self.keys = keys
        self.consumer = consumer
        self.reply_ttl_s = reply_ttl_s
        self._grouped: set[str] = set()

    def members(self, set_key: str) -> list[str]:
        """The streams named in a set (sorted), each with its group created."""
        streams = sorted(s.decode() for s in self.r.smembers(set_key))  # type: ignore[union-attr]
        for s in streams:
            if s not in self._grouped:
                self.ensure_group(s)
        return streams

    def ensure_group(self, stream: str) -> None:
        ensure_group(self.r, stream, GROUP)
        self._grouped.add(stream)

    def forget_groups(self) -> None:
        """After a reconnect the server may be new: re-create groups lazily."""
        self._grouped.clear()

    def read(self, streams: list[str], count: int, block_ms: int) -> list[Entry]:
        """Up to `count` new entries per stream; block_ms=0 returns at once (no BLOCK)."""
        try:
            resp: Any = self.r.xreadgroup(
                GROUP, self.consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms or None
            )
        except ResponseError as exc:
            if not is_nogroup(exc):
                raise
            self.forget_groups()
            for s in streams:
                self.ensure_group(s)
            return []
        out: list[Entry] = []
        for stream, entries in resp or ():
            name = stream.decode() if isinstance(stream, bytes) else stream
            out.extend(Entry(name, eid, fields) for eid, fields in entries if fields)
        return out

    def claim_stale(self, stream: str, min_idle_ms: int, count: int = 256) -> list[Entry]:
        """Take over entries idle past min_idle_ms: live workers renew what they hold (leases),
        so an idle entry belongs to a dead or stuck consumer."""
        rows: Any = self.r.xpending_range(stream, GROUP, min="-", max="+", count=count + 16, idle=min_idle_ms)
        rows = [row for row in rows if self._decode(row["consumer"]) != self.consumer][:count]
        return self._claim(stream, rows, min_idle_ms)

    @staticmethod
    def _decode(value: bytes | str) -> str:
        return value.decode() if isinstance(value, bytes) else value

    def _claim(self, stream: str, rows: Any, min_idle_ms: int) -> list[Entry]:
        ids = [row["message_id"] for row in rows if int(row["time_since_delivered"]) >= min_idle_ms]
        if not ids:
            return []
        delivered = {row["message_id"]: int(row["times_delivered"]) for row in rows}
        claimed: Any = self.r.xclaim(stream, GROUP, self.consumer, min_idle_ms, ids)
        entries = [Entry(stream, eid, fields, delivered.get(eid, 0) + 1) for eid, fields in claimed if fields]
        gone = [eid for eid, fields in claimed if not fields]
        if gone:  # deleted while pending: nothing to run
            self.r.xack(stream, GROUP, *gone)
        return entries

    def touch(self, stream: str, entry_ids: list[bytes]) -> None:
        """Reset the idle time of entries this consumer holds (JUSTID: delivery count kept)."""
        for i in range(0, len(entry_ids), 512):
            batch: list[Any] = entry_ids[i : i + 512]
            self.r.xclaim(stream, GROUP, self.consumer, 0, batch, justid=True)

    def dead_letter(self, entry: Entry, reason: str) -> None:
        self.r.xadd(
            self.keys.dead_letter,
            {
                b"stream": entry.stream.encode(),
                b"entry": entry.entry_id,
                b"deliveries": str(entry.deliveries).encode(),
                b"reason": reason.encode(),
                b"h": entry.fields.get(b"h", b""),
            },
            maxlen=10_000,
            approximate=True,
        )

    def heartbeat(self, worker_id: str, info: dict[str, object], ttl_s: float) -> None:
        info = {**info, "ts": time.time()}
        self.r.set(self.keys.worker(worker_id), orjson.dumps(info), px=int(ttl_s * 1000))

    def drop_heartbeat(self, worker_id: str) -> None:
        self.r.delete(self.keys.worker(worker_id))
