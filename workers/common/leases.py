"""Leases on the stream entries a worker holds (read, not yet finished).

A consumer group hands an entry to another consumer once it has been idle for claim_idle_ms.
A live worker that is loading a model or running a long batch must not lose its entries that
way, so it renews them (XCLAIM to itself with JUSTID: idle time reset, delivery count kept).
A worker that stops renewing (dead, or stalled past its requests' deadlines) gives them up.
"""

from __future__ import annotations

import threading

from workers.common.streams import Entry, StreamConsumer


class Leases:
    def __init__(self, queue: StreamConsumer) -> None:
        self._queue = queue
        self._lock = threading.Lock()
        self._held: dict[bytes, str] = {}

    def hold(self, entries: list[Entry]) -> None:
        with self._lock:
            for e in entries:
                self._held[e.entry_id] = e.stream

    def release(self, entries: list[Entry]) -> None:
        with self._lock:
            for e in entries:
                self._held.pop(e.entry_id, None)

    def __len__(self) -> int:
        return len(self._held)

    def renew(self) -> None:
        with self._lock:
            by_stream: dict[str, list[bytes]] = {}
            for entry_id, stream in self._held.items():
                by_stream.setdefault(stream, []).append(entry_id)
        for stream, ids in by_stream.items():
            self._queue.touch(stream, ids)
