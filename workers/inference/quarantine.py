"""Versions a worker unloaded because their model code hung past a deadline or its process died.

A pool thread condemns the version (its children are killed at once); the worker's loop then
unloads it once nothing of it is queued or running, reports it not loaded (so not ready) with
the reason among its load failures, and refuses to load it again until a back-off period has
passed: a model that hangs on some input would otherwise be reloaded by the next request and
tie up an instance for another whole deadline, again and again.
"""

from __future__ import annotations

import threading
import time


class Quarantine:
    def __init__(self, backoff_s: float) -> None:
        self.backoff_s = backoff_s
        self._lock = threading.Lock()
        self._until: dict[int, float] = {}
        self._why: dict[int, str] = {}
        self._to_unload: set[int] = set()

    def condemn(self, version_id: int, why: str) -> bool:
        """Record the failure; True the first time for this load of the version."""
        with self._lock:
            first = version_id not in self._to_unload
            self._to_unload.add(version_id)
            self._why[version_id] = why
            self._until[version_id] = time.monotonic() + self.backoff_s
            return first

    def condemned(self, version_id: int) -> bool:
        with self._lock:
            return version_id in self._to_unload

    def pending(self) -> list[int]:
        """Versions condemned and not unloaded yet."""
        with self._lock:
            return sorted(self._to_unload)

    def unloaded(self, version_id: int) -> None:
        with self._lock:
            self._to_unload.discard(version_id)

    def refusal(self, version_id: int) -> str | None:
        """Why a load is refused now, or None once the back-off has passed."""
        with self._lock:
            until = self._until.get(version_id)
            if until is None:
                return None
            left = until - time.monotonic()
            if left <= 0 and version_id not in self._to_unload:
                del self._until[version_id]
                return None
            return f"{self._why[version_id]}; it may load again in {max(left, 0):.0f} s"
