"""A running request's record and its chunk buffer: backend events become GenChunkMsg entries
with seq 0, 1, 2, ... A streaming request's buffer is due when it holds its first token (time to
first token), `flush_tokens` tokens, a token older than `flush_ms`, or its end; a non-streaming
request's only at its end, so that a retried attempt never repeats text the client has."""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.common.streams import Entry
from workers.contract.generation import GenChunkMsg, GenRequestMsg
from workers.generation.backend import GenEvent


@dataclass(slots=True)
class ChunkBuffer:
    """Unsent output of one request, merged per choice (`index`) until it is due."""

    request_id: str
    worker: str = ""
    seq: int = 0  # the next chunk's
    chunks: list[GenChunkMsg] = field(default_factory=list)
    tokens: int = 0  # unsent tokens
    oldest: float | None = None  # monotonic time of the oldest unsent event
    urgent: bool = False  # a first token or the end: due now
    done: bool = False

    def add(self, ev: GenEvent, now: float) -> None:
        chunk = next((c for c in self.chunks if c.index == ev.index and c.finish is None), None)
        if chunk is None:
            chunk = GenChunkMsg(self.request_id, -1, ev.index, worker=self.worker)
            self.chunks.append(chunk)
        chunk.text += ev.text
        chunk.tokens += ev.tokens
        if ev.logprobs:
            chunk.logprobs = [*(chunk.logprobs or []), *ev.logprobs]
        if ev.finish is not None:
            chunk.finish, chunk.code, chunk.error = ev.finish, ev.code, ev.error
        if ev.done:
            chunk.done, chunk.usage = True, ev.usage
            self.done = True
        self.tokens += ev.tokens
        self.oldest = now if self.oldest is None else self.oldest
        self.urgent = self.urgent or ev.first_token or ev.done

    def due(self, now: float, stream: bool, flush_tokens: int, flush_s: float) -> bool:
        if not self.chunks:
            return False
        if not stream:
            return self.done
        if self.urgent or self.tokens >= flush_tokens:
            return True
        return self.oldest is not None and now - self.oldest >= flush_s

    def take(self) -> list[GenChunkMsg]:
        """The buffered chunks, numbered (the request's last one last)."""
        out = [c for c in self.chunks if not c.done] + [c for c in self.chunks if c.done]
        for c in out:
            c.seq, self.seq = self.seq, self.seq + 1
        self.chunks, self.tokens, self.oldest, self.urgent = [], 0, None, False
        return out

    def end(self, code: str, message: str, finish: str = "error") -> None:
        """End the request now (no event from the backend will): what is buffered goes with it."""
        self.chunks.append(
            GenChunkMsg(
                self.request_id, -1, finish=finish, done=True, code=code, error=message, worker=self.worker
            )
        )
        self.done = self.urgent = True


@dataclass(slots=True)
class Running:
    """A request admitted to a backend (a typed record, never a tuple read by position)."""

    entry: Entry
    msg: GenRequestMsg
    version_id: int
    model: str  # the version's model name and number, for metrics and charges
    version: int
    arrived: float  # monotonic
    deadline: float  # monotonic
    buffer: ChunkBuffer
    last_token: float = 0.0  # monotonic, 0 before the first
    cancelling: str = ""  # "" | "client" | "deadline"
    cancelled_at: float = 0.0

    @property
    def request_id(self) -> str:
        return self.msg.request_id
