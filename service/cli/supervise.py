"""Embedded mode's child processes (workers, the trainer): started, watched, restarted.

A child that exits while the stack is running is started again after a delay that doubles with
each quick failure (KILN_SERVE_RESTART_DELAY_S, capped at KILN_SERVE_RESTART_MAX_DELAY_S) and
goes back to the base once a child has stayed up for STABLE_S. Every exit and restart is logged.
Readiness (GET /v2/health/ready) counts workers by their heartbeats, so a stack whose workers are
all down answers 503 meanwhile.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("kiln.serve")
BASE_DELAY_S = 0.5
MAX_DELAY_S = 30.0
STABLE_S = 60.0

Spawn = Callable[[], "subprocess.Popen[bytes]"]


def backoff(failures: int, base: float = BASE_DELAY_S, cap: float = MAX_DELAY_S) -> float:
    """The delay before restart number `failures` (1, 2, ...): base, 2 base, 4 base, ... <= cap."""
    return float(min(cap, base * 2 ** max(0, failures - 1)))


@dataclass(slots=True)
class Child:
    name: str
    spawn: Spawn
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    restarts: int = field(default=0)

    def start(self) -> None:
        self.proc = self.spawn()
        self.started = time.monotonic()
        self.restart_at = None


class Supervisor:
    def __init__(self, base_s: float = BASE_DELAY_S, cap_s: float = MAX_DELAY_S, poll_s: float = 0.2) -> None:
        self.base_s, self.cap_s = base_s, cap_s
        self.children: list[Child] = []
        self._stop = threading.Event()
        self._poll_s = poll_s
        self._thread = threading.Thread(target=self._run, name="kiln-supervisor", daemon=True)

    def add(self, name: str, spawn: Spawn) -> Child:
        child = Child(name, spawn)
        child.start()
        self.children.append(child)
        return child

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            for child in self.children:
                self.check(child, time.monotonic())

    def check(self, child: Child, now: float) -> None:
        """One look at a child: schedule a restart when it has exited, restart when it is due."""
        if self._stop.is_set() or child.proc is None:
            return
        if child.restart_at is None:
            code = child.proc.poll()
            if code is None:
                return
            child.failures = 1 if now - child.started >= STABLE_S else child.failures + 1
            delay = backoff(child.failures, self.base_s, self.cap_s)
            child.restart_at = now + delay
            log.warning(
                "%s (pid %d) exited with %s; restarting in %.1f s", child.name, child.proc.pid, code, delay
            )
        elif now >= child.restart_at:
            child.start()
            child.restarts += 1
            assert child.proc is not None
            log.warning("%s restarted (pid %d, restart %d)", child.name, child.proc.pid, child.restarts)

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        procs = [c.proc for c in self.children if c.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
