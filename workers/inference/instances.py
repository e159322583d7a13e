"""Several instances of one model version on one worker (`instances` in the version config):
each instance is a runner of its own, bound to one thread of a small pool, so batches of that
version run concurrently. The worker hands a batch over only while an instance is free."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from workers.inference.runtime import Runner

log = logging.getLogger("kiln.instances")


class InstancePool:
    def __init__(self, runners: list[Runner], name: str) -> None:
        self.size = len(runners)
        self._free: queue.SimpleQueue[Runner] = queue.SimpleQueue()
        for r in runners:
            self._free.put(r)
        self._local = threading.local()
        self._cond = threading.Condition()
        self.inflight = 0
        self._executor = ThreadPoolExecutor(self.size, thread_name_prefix=name, initializer=self._bind)

    def _bind(self) -> None:
        self._local.runner = self._free.get()

    def current(self) -> Runner:
        """The runner of the calling pool thread."""
        runner: Runner = self._local.runner
        return runner

    def has_capacity(self) -> bool:
        return self.inflight < self.size

    def submit(self, fn: Callable[[], None]) -> None:
        with self._cond:
            self.inflight += 1
        self._executor.submit(fn).add_done_callback(self._done)

    def _done(self, fut: Future[None]) -> None:
        exc = fut.exception()
        if exc is not None:
            log.error("batch failed outside the model: %s", type(exc).__name__, exc_info=exc)
        with self._cond:
            self.inflight -= 1
            self._cond.notify_all()

    def drain(self, timeout_s: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.inflight == 0, timeout_s)

    def close(self) -> None:
        self.drain()
        self._executor.shutdown(wait=True)
