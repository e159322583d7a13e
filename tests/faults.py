"""Fault injection for tests: a runner wrapper that crashes its process, hangs or slows down
on chosen input values. Production code has no such switch: tests install this wrapper, in a
worker thread (monkeypatch) or in a worker process (tests/e2e/fault_worker.py)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from workers.inference.runtime import Runner

CRASH_EXIT_CODE = 86


class FaultRunner:
    def __init__(
        self,
        inner: Runner,
        *,
        crash_on: float | None = None,
        hang_on: float | None = None,
        release: threading.Event | None = None,
        hang_max_s: float = 120.0,
        delay_s: float = 0.0,
        slow_on: float | None = None,
    ) -> None:
        self.inner = inner
        self.device = inner.device
        self.crash_on = crash_on
        self.hang_on = hang_on
        self.release = release or threading.Event()
        self.hang_max_s = hang_max_s
        self.delay_s = delay_s
        self.slow_on = slow_on  # None: every batch is slowed by delay_s; else only these

    def _has(self, inputs: dict[str, np.ndarray], value: float | None) -> bool:
        if value is None:
            return False
        return any(a.dtype.kind in "iuf" and bool((a == value).any()) for a in inputs.values())

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._has(inputs, self.crash_on):
            os._exit(CRASH_EXIT_CODE)  # the process dies mid-batch, nothing acknowledged
        if self._has(inputs, self.hang_on):
            self.release.wait(self.hang_max_s)
        if self.delay_s and (self.slow_on is None or self._has(inputs, self.slow_on)):
            time.sleep(self.delay_s)
        return self.inner.run(inputs)


def wrapping(load: Any, **faults: Any) -> Any:
    """A drop-in for workers.inference.model_cache.load_runner that wraps what it loads."""

    def load_runner(*args: Any, **kwargs: Any) -> FaultRunner:
        return FaultRunner(load(*args, **kwargs), **faults)

    return load_runner
