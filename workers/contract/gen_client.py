"""The gateway side of text generation (workers/contract/generation.py): one asyncio.Queue per
request in flight, fed by the gateway's one reply reader (workers/contract/client.py), read in
`seq` order by the request's handler. Holds no connection: the client passes its own."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from workers.contract.errors import EngineUnavailable, ReplyTimeout
from workers.contract.generation import GenChunkMsg
from workers.contract.messages import ContractError

log = logging.getLogger("kiln.engine")
CANCEL_TTL_S = 600  # a cancel key outlives any request's deadline
MAX_QUEUED = 10_000  # chunks held for one request (a reader that stopped reading cannot grow this)

Item = GenChunkMsg | BaseException


class GenReplies:
    """Per-request chunk queues. `open` before the request is enqueued, `chunks` to read them,
    `close` when done (always: it forgets the queue)."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[Item]] = {}

    def open(self, request_id: str) -> None:
        self._queues[request_id] = asyncio.Queue(MAX_QUEUED)

    def close(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._queues

    def deliver(self, fields: dict[bytes, bytes]) -> None:
        """A chunk from the reply stream to its request's queue (dropped when nobody waits)."""
        try:
            chunk = GenChunkMsg.from_fields(fields)
        except ContractError:
            log.error("dropped a malformed generation chunk")
            return
        queue = self._queues.get(chunk.request_id)
        if queue is None:
            return
        try:
            queue.put_nowait(chunk)
        except asyncio.QueueFull:  # the reader stopped reading: end it with an error
            _force(queue, EngineUnavailable("the reader fell behind"))
            log.warning("ended a generation whose reader fell %d chunks behind", MAX_QUEUED)

    def fail_all(self, reason: str) -> None:
        """Every open request ends with EngineUnavailable (the reply stream was lost); the
        queues stay until their requests `close` them, so a reader that starts later learns it too."""
        for queue in self._queues.values():
            _force(queue, EngineUnavailable(reason))

    async def chunks(self, request_id: str, deadline: float) -> AsyncIterator[GenChunkMsg]:
        """The request's chunks in `seq` order (duplicates dropped) until its last one (`done`).
        Raises ReplyTimeout past `deadline` (time.monotonic()), EngineUnavailable on a lost
        connection, KeyError when the request is not open here."""
        queue = self._queues[request_id]
        expected, early = 0, {}  # seq -> chunk that came before its turn
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReplyTimeout("no reply before the deadline")
            try:
                item = await asyncio.wait_for(queue.get(), left)
            except TimeoutError as exc:
                raise ReplyTimeout("no reply before the deadline") from exc
            if isinstance(item, BaseException):
                raise item
            if item.seq < expected:
                continue
            early[item.seq] = item
            while expected in early:
                chunk = early.pop(expected)
                expected += 1
                yield chunk
                if chunk.done:
                    return


def _force(queue: asyncio.Queue[Any], item: Any) -> None:
    while True:
        try:
            queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            queue.get_nowait()
