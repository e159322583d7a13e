"""The worker takes over a dead consumer's entries one suspect at a time: a reclaimed request that
crashes the worker must not take other reclaimed requests with it (each such crash costs every
request it held a delivery, and past max_deliveries an innocent request is dead-lettered)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

from workers.common.streams import Entry
from workers.inference.batcher import Item
from workers.inference.validation import Valid
from workers.inference.worker import Worker


class _Stale:
    """claim_stale over a dead consumer's pending entries, in id order."""

    def __init__(self, n: int) -> None:
        self.pending = [Entry("s", b"%d-0" % i, {}, 2) for i in range(n)]

    def claim_stale(self, _stream: str, _idle_ms: int, count: int) -> list[Entry]:
        taken, self.pending = self.pending[:count], self.pending[count:]
        return taken


def _worker(stale: _Stale, started: list[list[Item]]) -> Any:
    w: Any = Worker.__new__(Worker)  # the loop's state only: no Redis, registry or models
    w.queue = stale
    w.cache = SimpleNamespace(config=SimpleNamespace(claim_idle_ms=1000))  # Worker.config reads it
    w.metrics = SimpleNamespace(claimed=SimpleNamespace(inc=lambda _n: None))
    w.leases = SimpleNamespace(hold=lambda _e: None)
    w.validator = SimpleNamespace(
        validate=lambda e: Valid(1, None, Item((e, None), {}, 1, (), 0.0), alone=e.deliveries > 1)  # type: ignore[arg-type]
    )
    w._dispatch = lambda _v, items: started.append(items)  # handed to the pool; not run yet
    w._suspects, w._more_to_claim = set(), False
    return w


def test_a_reclaimed_entry_runs_before_the_next_is_claimed() -> None:
    stale, started = _Stale(3), list[list[Item]]()
    w = _worker(stale, started)
    w._reclaim("s")
    assert [[i.key[0].entry_id for i in b] for b in started] == [[b"0-0"]]
    assert len(stale.pending) == 2 and w._more_to_claim  # left pending under the dead consumer
    w._reclaim("s")  # still running: nothing more is claimed
    assert len(started) == 1

    w.executor = SimpleNamespace(execute=lambda _l, _i: SimpleNamespace(replies=[], charges=[]))
    w._finish = lambda *_a: None
    w._run_batch(None, started[0])  # the first suspect finishes
    w._reclaim("s")
    assert [b[0].key[0].entry_id for b in started] == [b"0-0", b"1-0"]


def test_a_suspect_that_fails_to_dispatch_does_not_block_reclaiming() -> None:
    stale, started = _Stale(2), list[list[Item]]()
    w = _worker(stale, started)

    def broken(_v: int, _items: list[Item]) -> None:
        raise KeyError(1)

    w._dispatch = broken
    with contextlib.suppress(KeyError):
        w._reclaim("s")
    assert not w._suspects
