"""The worker side of the queue: consumer-group reads, take-over of a dead consumer's
entries (XAUTOCLAIM), replies, acknowledgement, dead-lettering, heartbeats.

Acknowledged entries are deleted, so a request stream holds only work not yet done:
its length is the queue depth and nothing un-ACKed is ever trimmed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from redis.exceptions import ResponseError

from workers.contract import usage
from workers.contract.groups import ensure_group, is_nogroup
from workers.contract.jsonlog import request_log
from workers.contract.messages import InferReplyMsg
from workers.contract.redis_keys import GROUP, RedisKeys


@dataclass(slots=True)
class Entry:
    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes]
    deliveries: int = 1


class WorkQueue:
    def __init__(self, client: redis.Redis, keys: RedisKeys, consumer: str, reply_ttl_s: int) -> None:
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

    def finish(
        self,
        replies: list[tuple[str, InferReplyMsg]],
        done: list[Entry],
        charges: list[usage.Charge] | None = None,
    ) -> None:
        """Send replies, charge usage and acknowledge + delete the finished entries in one
        round trip."""
        _log_replies(replies)
        pipe = self.r.pipeline(transaction=False)
        usage.record(pipe, self.keys.prefix, charges or [])
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


def _log_replies(replies: list[tuple[str, InferReplyMsg]]) -> None:
    if not request_log.isEnabledFor(logging.INFO):
        return
    for _stream, reply in replies:
        request_log.info(
            "reply %s",
            "ok" if reply.ok else reply.error_code,
            extra={
                "request_id": reply.request_id,
                "ok": reply.ok,
                "error_code": reply.error_code or None,
                "batch_size": reply.batch_size,
                "compute_us": reply.compute_us,
                "worker": reply.worker,
            },
        )
