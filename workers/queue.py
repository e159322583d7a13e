"""The worker side of the queue: consumer-group reads, take-over of a dead consumer's
entries (XAUTOCLAIM), replies, acknowledgement, dead-lettering, heartbeats.

Acknowledged entries are deleted, so a request stream holds only work not yet done:
its length is the queue depth and nothing un-ACKed is ever trimmed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from redis.exceptions import ResponseError

from workers.contract import InferReplyMsg
from workers.keys import GROUP, Keys


@dataclass(slots=True)
class Entry:
    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes]
    deliveries: int = 1


class WorkQueue:
    def __init__(self, client: redis.Redis, keys: Keys, consumer: str, reply_ttl_s: int) -> None:
        self.r = client
        self.keys = keys
        self.consumer = consumer
        self.reply_ttl_s = reply_ttl_s
        self._grouped: set[str] = set()

    def active_streams(self) -> list[str]:
        streams = sorted(s.decode() for s in self.r.smembers(self.keys.streams))  # type: ignore[union-attr]
        for s in streams:
            if s not in self._grouped:
                self.ensure_group(s)
        return streams

    def ensure_group(self, stream: str) -> None:
        try:
            self.r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
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
            if "NOGROUP" not in str(exc):
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
        """Take over entries another consumer read but did not ack within min_idle_ms."""
        resp = self.r.xautoclaim(
            stream, GROUP, self.consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count
        )
        claimed = resp[1] if resp else []
        entries = [Entry(stream, eid, fields) for eid, fields in claimed if fields]
        deleted = [eid for eid, fields in claimed if not fields]
        if deleted:
            self.r.xack(stream, GROUP, *deleted)
        if entries:
            counts = self.r.xpending_range(
                stream,
                GROUP,
                min=entries[0].entry_id,
                max=entries[-1].entry_id,
                count=len(entries) + 64,
                consumername=self.consumer,
            )
            by_id = {c["message_id"]: int(c["times_delivered"]) for c in counts}
            for e in entries:
                e.deliveries = by_id.get(e.entry_id, 1)
        return entries

    def touch(self, stream: str, entry_ids: list[bytes]) -> None:
        """Reset the idle time of entries this consumer holds (JUSTID: delivery count kept)."""
        for i in range(0, len(entry_ids), 512):
            batch: list[Any] = entry_ids[i : i + 512]
            self.r.xclaim(stream, GROUP, self.consumer, 0, batch, justid=True)

    def finish(self, replies: list[tuple[str, InferReplyMsg]], done: list[Entry]) -> None:
        """Send replies and acknowledge + delete the finished entries in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        reply_streams = set()
        for reply_to, reply in replies:
            pipe.xadd(reply_to, reply.to_fields(), maxlen=100_000, approximate=True)  # type: ignore[arg-type]
            reply_streams.add(reply_to)
        for rs in reply_streams:
            pipe.expire(rs, self.reply_ttl_s)
        by_stream: dict[str, list[bytes]] = {}
        for e in done:
            by_stream.setdefault(e.stream, []).append(e.entry_id)
        for stream, ids in by_stream.items():
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)
        pipe.execute()

    def keep(self, keys: set[str], ttl_s: int) -> None:
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.expire(key, ttl_s)
        pipe.execute()

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
