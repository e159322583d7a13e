"""The inference worker's side of the queue: the shared consumer (workers/common/streams.py:
reads, take-over of a dead consumer's entries, dead-lettering, heartbeats) plus the replies,
charges and acknowledgement of finished batches.

Acknowledged entries are deleted, so a request stream holds only work not yet done:
its length is the queue depth and nothing un-ACKed is ever trimmed.
"""

from __future__ import annotations

import logging

from workers.common.streams import Entry, StreamConsumer
from workers.contract import usage
from workers.contract.jsonlog import request_log
from workers.contract.messages import InferReplyMsg
from workers.contract.redis_keys import GROUP

__all__ = ["Entry", "WorkQueue"]


class WorkQueue(StreamConsumer):
    def active_streams(self) -> list[str]:
        return self.members(self.keys.streams)

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
