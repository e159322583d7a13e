"""The generation worker's side of the queue: the shared consumer (workers/common/streams.py)
over the generation streams, plus what is generation's own: chunks out (with the progress key a
successor numbers its error chunk after), the cancel keys in, and the last chunk of a request
sent with its charge and its acknowledgement in one round trip (at-least-once: never acked
before its last chunk is written)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.common.streams import Entry, StreamConsumer
from workers.contract import usage
from workers.contract.generation import GenChunkMsg
from workers.contract.redis_keys import GROUP

REPLY_MAXLEN = 100_000


@dataclass(slots=True)
class Out:
    """Chunks for one reply stream; with `entry` the request ends here (ack, charge)."""

    reply_to: str
    request_id: str
    chunks: list[GenChunkMsg]
    next_seq: int  # for the progress key of a streaming request still running
    stream: bool = True
    entry: Entry | None = None
    charge: usage.TokenCharge | None = None


class GenQueue(StreamConsumer):
    def active_streams(self) -> list[str]:
        return self.members(self.keys.gen_streams)

    def send(self, outs: list[Out]) -> None:
        """All of these in one pipeline: chunks, progress, charges, acks."""
        if not outs:
            return
        pipe = self.r.pipeline(transaction=False)
        usage.record_tokens(pipe, self.keys.prefix, [o.charge for o in outs if o.charge is not None])
        replies: set[str] = set()
        for o in outs:
            for chunk in o.chunks:
                pipe.xadd(o.reply_to, chunk.to_fields(), maxlen=REPLY_MAXLEN, approximate=True)  # type: ignore[arg-type]
            if o.chunks:
                replies.add(o.reply_to)
            progress = self.keys.gen_progress(o.request_id)
            if o.entry is not None:
                if o.request_id:
                    pipe.delete(progress)
                pipe.xack(o.entry.stream, GROUP, o.entry.entry_id)
                pipe.xdel(o.entry.stream, o.entry.entry_id)
            elif o.stream and o.chunks:
                pipe.set(progress, o.next_seq, ex=self.reply_ttl_s)
        for rs in replies:
            pipe.expire(rs, self.reply_ttl_s)
        pipe.execute()

    def cancelled(self, request_ids: list[str]) -> set[str]:
        """Which of these requests the gateway has cancelled (one MGET)."""
        if not request_ids:
            return set()
        values: Any = self.r.mget([self.keys.gen_cancel(i) for i in request_ids])
        return {i for i, v in zip(request_ids, values, strict=True) if v is not None}

    def progress(self, request_id: str) -> int:
        """The seq the next chunk of a request gets (chunks a dead worker sent before it)."""
        raw: Any = self.r.get(self.keys.gen_progress(request_id))
        try:
            return max(0, int(raw)) if raw is not None else 0
        except ValueError:
            return 0
