"""Admission of dequeued generation entries, each on its own: an entry delivered too often is
dead-lettered; one that does not parse is answered if its reply stream can be named, else
dead-lettered; one past its deadline is answered at once (no GPU time spent); a streaming
request taken over from a dead worker gets a worker_lost error (its client already has part of
the text: never a silent truncation), a non-streaming one (or a stream with no chunk sent yet)
is generated again from scratch; the rest are submitted to their version's backend
(GenInputError -> an error chunk with its code)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from workers.common.streams import Entry
from workers.contract.generation import GenChunkMsg, GenErrorCode, GenRequestMsg
from workers.contract.messages import ContractError
from workers.generation.backend import GenInputError
from workers.generation.backends import GenBackends, LoadFailed
from workers.generation.chunks import ChunkBuffer, Running
from workers.generation.queue import GenQueue, Out

log = logging.getLogger("kiln.generation")


def peek(fields: dict[bytes, bytes]) -> tuple[str, str] | None:
    """(request id, reply stream) of an entry too broken to parse whole, if it names them."""
    try:
        h: Any = orjson.loads(fields.get(b"h", b""))
        rid, reply = h["id"], h["reply"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if isinstance(rid, str) and isinstance(reply, str) and 0 < len(rid) <= 200:
        return rid, reply
    return None


class Admitter:
    def __init__(
        self,
        queue: GenQueue,
        backends: GenBackends,
        worker_id: str,
        max_deliveries: int,
        rejected: Callable[[str, int, str], None] | None = None,
    ) -> None:
        self.queue = queue
        self.backends = backends
        self.worker_id = worker_id
        self.max_deliveries = max_deliveries
        self.rejected = rejected  # (model, version, code) of a request the model refused

    def _fail(
        self, entry: Entry, rid: str, reply: str, stream: bool, code: str, message: str, seq: int = -1
    ) -> Out:
        """The one error chunk that ends the entry (numbered after what a dead worker sent)."""
        if seq < 0:
            seq = self.queue.progress(rid) if entry.deliveries > 1 else 0
        chunk = GenChunkMsg.failure(rid, seq, code, message, self.worker_id)
        return Out(reply, rid, [chunk], seq + 1, stream, entry)

    def _broken(self, entry: Entry, why: str, code: str, message: str, dead: bool) -> Out:
        """An entry that cannot run: answered if it names a reply stream of ours (dead-lettered
        too when `dead`), else dead-lettered and acked without a reply (nowhere to send one)."""
        ident = peek(entry.fields)
        if dead or ident is None or not self.queue.keys.is_reply_stream(ident[1]):
            self.queue.dead_letter(entry, why)
        if ident is None or not self.queue.keys.is_reply_stream(ident[1]):
            return Out("", "", [], 0, False, entry)
        return self._fail(entry, ident[0], ident[1], True, code, message)

    def admit(self, entry: Entry) -> Running | Out | None:
        """The running request, the Out that ends the entry now, or None while its version
        loads (admit it again later: every check runs again then)."""
        if entry.deliveries > self.max_deliveries:
            message = "request failed on every delivery and was dead-lettered"
            why = f"delivered {entry.deliveries} times"
            return self._broken(entry, why, GenErrorCode.MODEL_ERROR, message, dead=True)
        try:
            msg = GenRequestMsg.from_fields(entry.fields)
        except ContractError as exc:
            why = str(exc)[:300]
            return self._broken(entry, why, GenErrorCode.INVALID_INPUT, why, dead=False)
        if not self.queue.keys.is_reply_stream(msg.reply_to):
            self.queue.dead_letter(entry, "reply stream is not a gateway's")
            return Out("", "", [], 0, False, entry)
        rid, reply, stream = msg.request_id, msg.reply_to, msg.stream
        remaining_ms = msg.deadline_ms - int(time.time() * 1000)
        if remaining_ms <= 0:
            return self._fail(
                entry, rid, reply, stream, GenErrorCode.DEADLINE_EXCEEDED, "deadline passed while queued"
            )
        sent = self.queue.progress(rid) if entry.deliveries > 1 and stream else 0
        if sent:  # the client has part of the text: it must learn that the rest is lost
            message = "the worker generating this stream was lost; the response is incomplete, retry it"
            return self._fail(entry, rid, reply, stream, GenErrorCode.WORKER_LOST, message, sent)
        return self._submit(entry, msg, remaining_ms)  # nothing sent yet: generated from scratch

    def _submit(self, entry: Entry, msg: GenRequestMsg, remaining_ms: int) -> Running | Out | None:
        rid, reply, stream = msg.request_id, msg.reply_to, msg.stream
        version_id = self.queue.keys.gen_version_of(entry.stream)
        hosted, adapter = None, None
        try:
            hosted = self.backends.get(version_id)
            if hosted is None:
                return None
            if msg.adapter is None:
                hosted.backend.submit(msg)
            else:  # a LoRA adapter of this base: its bytes go to the backend when it lacks them
                adapter = self.backends.adapters.version(msg.adapter, version_id)
                hosted.backend.submit(msg, self.backends.adapters.reader(version_id))
        except LoadFailed as exc:
            return self._fail(entry, rid, reply, stream, exc.code, str(exc))
        except GenInputError as exc:
            code = exc.code or GenErrorCode.INVALID_INPUT
            if self.rejected is not None and hosted is not None:
                self.rejected(hosted.version.model, hosted.version.version, code)
            return self._fail(entry, rid, reply, stream, code, str(exc)[:1000])
        except Exception as exc:  # a backend that fails a submit fails that request alone
            log.warning("generation submit failed: %s", type(exc).__name__)
            return self._fail(
                entry, rid, reply, stream, GenErrorCode.MODEL_ERROR, "the model failed to start"
            )
        assert hosted is not None
        hosted.running.add(rid)
        now = time.monotonic()
        v = adapter or hosted.version  # metrics and token charges name the adapter asked for
        return Running(
            entry,
            msg,
            version_id,
            v.model,
            v.version,
            now,
            now + remaining_ms / 1000,
            ChunkBuffer(rid, self.worker_id),
        )
