"""A worker's loop while Redis (or the database) is away: redis-py's `Retry` runs each turn,
and after a failure its exponential backoff is waited on the loop's stop event, so that a stop
is never held up by a back-off. A turn that succeeds resets the backoff."""

from __future__ import annotations

import threading
from collections.abc import Callable

from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry


def run_until_stopped(
    turn: Callable[[], None],
    stop: threading.Event,
    errors: tuple[type[Exception], ...],
    on_error: Callable[[Exception], None],
    backoff: ExponentialBackoff,
) -> None:
    """Call turn() until `stop` is set; after one of `errors`, on_error(exc), then wait
    backoff.compute(failures in a row) seconds or until stopped."""
    retry = Retry(NoBackoff(), retries=-1, supported_errors=errors)  # the wait is in fail()

    def do() -> None:
        if not stop.is_set():
            turn()

    def fail(exc: Exception, failures: int) -> None:
        on_error(exc)
        stop.wait(backoff.compute(failures))

    while not stop.is_set():
        retry.call_with_retry(do, fail, with_failure_count=True)
