"""Stall detection for the worker loop.

The loop runs model code on its own thread; if that code hangs, nothing else on that thread
runs, including the heartbeat. The watchdog is a second thread that, while a batch is running,
keeps the worker's heartbeat alive and marks the worker not ready once the batch has run past
the earliest deadline of its requests (those requests have failed at the gateway by then).
It also renews the leases on the entries the worker holds, until it stalls.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("kiln.watchdog")


class Watchdog:
    def __init__(
        self, beat: Callable[[bool, float], None], renew: Callable[[], None], interval_s: float
    ) -> None:
        """Every interval_s: `renew()` the leases on held entries unless stalled, and while busy
        `beat(ready, busy_s)` the heartbeat."""
        self._beat = beat
        self._renew = renew
        self._interval = interval_s
        self._lock = threading.Lock()
        self._busy: dict[int, tuple[float, float]] = {}  # token -> (since, deadline), one per batch
        self._next = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kiln-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    @contextlib.contextmanager
    def busy(self, deadline: float) -> Iterator[None]:
        """Mark a batch running until the block ends; `deadline` is monotonic seconds.
        Batches may run concurrently (model instances): each has its own slot."""
        with self._lock:
            token, self._next = self._next, self._next + 1
            self._busy[token] = (time.monotonic(), deadline)
        try:
            yield
        finally:
            with self._lock:
                self._busy.pop(token, None)

    def _state(self) -> tuple[float | None, float]:
        """(earliest start, earliest deadline) over running batches."""
        with self._lock:
            if not self._busy:
                return None, float("inf")
            return min(s for s, _ in self._busy.values()), min(d for _, d in self._busy.values())

    def stalled(self, now: float | None = None) -> bool:
        since, deadline = self._state()
        return since is not None and (now or time.monotonic()) > deadline

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._tick()
            except Exception as exc:  # the watchdog must never die
                log.warning("watchdog turn failed: %s", type(exc).__name__)

    def _tick(self) -> None:
        since, deadline = self._state()
        now = time.monotonic()
        ready = now <= deadline
        if ready:
            self._renew()
        if since is None:
            return
        if not ready:
            log.warning("model code has run %.1fs, past its requests' deadline", now - since)
        self._beat(ready, now - since)
