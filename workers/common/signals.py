"""Graceful stop for the long-running worker and trainer loops."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType


def stop_on_signals(stop: threading.Event, log: logging.Logger, what: str) -> None:
    """SIGTERM and SIGINT set `stop`; the loop finishes or hands back its work and returns."""

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: %s", signum, what)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
