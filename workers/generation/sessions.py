"""The requests running on a worker's backends: their events become chunks (flushed by the
buffer's policy, chunks.py), client cancels and deadlines cancel their sequences, and a request
that ends is charged its tokens in the round trip that sends its last chunk and acks it."""

from __future__ import annotations

import logging
import time

from workers.contract.generation import GenChunkMsg, GenErrorCode
from workers.contract.usage import TokenCharge
from workers.generation.backend import GenEvent
from workers.generation.backends import GenBackends
from workers.generation.chunks import Running
from workers.generation.config import GenConfig
from workers.generation.metrics import GenMetrics
from workers.generation.queue import Out

log = logging.getLogger("kiln.generation")
DEADLINE_MESSAGE = "deadline exceeded while generating"


class Sessions:
    def __init__(self, backends: GenBackends, metrics: GenMetrics, config: GenConfig) -> None:
        self.backends = backends
        self.metrics = metrics
        self.config = config
        self.running: dict[str, Running] = {}

    def __len__(self) -> int:
        return len(self.running)

    def add(self, r: Running) -> None:
        self.running[r.request_id] = r

    def events(self, events: list[GenEvent], now: float) -> None:
        for ev in events:
            r = self.running.get(ev.request_id)
            if r is None:  # ended already (deadline grace, backend failure)
                continue
            if ev.first_token and r.last_token == 0.0:
                self.metrics.first_token(r.model, r.version, time.time() - r.msg.enqueued_ms / 1000)
            elif ev.tokens and r.last_token:
                self.metrics.tokens(r.model, r.version, now - r.last_token, ev.tokens)
            if ev.tokens:
                r.last_token = now
            if r.cancelling == "deadline" and ev.finish == "cancelled":
                ev.finish, ev.code, ev.error = "error", GenErrorCode.DEADLINE_EXCEEDED, DEADLINE_MESSAGE
            r.buffer.add(ev, now)

    def due(self, now: float) -> list[Out]:
        """Chunks due by the flush policy; requests whose last chunk goes out end here."""
        cfg = self.config
        outs: list[Out] = []
        for r in list(self.running.values()):
            if r.buffer.due(now, r.msg.stream, cfg.flush_tokens, cfg.flush_ms / 1000):
                outs.append(self._out(r, r.buffer.take()))
        return outs

    def _out(self, r: Running, chunks: list[GenChunkMsg]) -> Out:
        out = Out(r.msg.reply_to, r.request_id, chunks, r.buffer.seq, r.msg.stream)
        last = chunks[-1] if chunks else None
        if last is None or not last.done:
            return out
        self.running.pop(r.request_id, None)
        hosted = self.backends.hosted.get(r.version_id)
        if hosted is not None:
            hosted.running.discard(r.request_id)
        out.entry = r.entry
        finish = last.finish or "stop"
        self.metrics.ended(r.model, r.version, finish, last.code, time.time() - r.msg.enqueued_ms / 1000)
        u = last.usage
        if u is not None and u.total_tokens > 0:  # charged once: for the attempt that answered
            out.charge = TokenCharge(
                r.msg.tenant_id, r.msg.key_id, r.model, r.version, u.prompt_tokens, u.completion_tokens
            )
            self.metrics.charged(out.charge)
        return out

    def cancel(self, cancelled: set[str], now: float) -> None:
        """Cancel the sequences the gateway asked to, and those past their deadline."""
        for r in list(self.running.values()):
            if r.cancelling:
                continue
            if r.request_id in cancelled:
                r.cancelling = "client"
            elif now >= r.deadline:
                r.cancelling = "deadline"
            else:
                continue
            r.cancelled_at = now
            hosted = self.backends.hosted.get(r.version_id)
            try:
                if hosted is not None:
                    hosted.backend.cancel(r.request_id)
            except Exception as exc:
                log.warning("cancel failed: %s", type(exc).__name__)

    def overdue(self, now: float) -> None:
        """A cancelled request the backend did not end within the grace is ended here."""
        grace = self.config.deadline_grace_ms / 1000
        for r in self.running.values():
            if r.cancelling and not r.buffer.done and now - r.cancelled_at >= grace:
                if r.cancelling == "deadline":
                    r.buffer.end(GenErrorCode.DEADLINE_EXCEEDED, DEADLINE_MESSAGE)
                else:
                    r.buffer.end("", "", finish="cancelled")

    def fail_version(self, version_id: int, code: str, message: str) -> None:
        """The version's backend failed: every request on it ends with an error chunk."""
        for r in self.running.values():
            if r.version_id == version_id and not r.buffer.done:
                r.buffer.end(code, message)

    def ids(self) -> list[str]:
        return [i for i, r in self.running.items() if not r.cancelling]
