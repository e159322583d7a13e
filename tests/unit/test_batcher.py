"""The batching policy alone: max size, preferred sizes, delay, priority, shapes."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from model_store.signature import VersionConfig
from workers.inference.batcher import Batcher, BatchPolicy, Item


def _item(n: int, t: float = 0.0, priority: int = 0, shape: tuple[int, ...] = (4,)) -> Item:
    return Item(
        key=n, inputs={"x": np.zeros((1, *shape))}, count=1, shape_key=(shape,), arrived=t, priority=priority
    )


def _batches(b: Batcher, now: float, flush: bool = False) -> list[list[int]]:
    return [[i.key for i in items] for _v, items in b.ready(now, flush=flush)]


def test_runs_when_full_or_when_the_delay_passes() -> None:
    b, p = Batcher(), BatchPolicy(4, 0.010)
    for n in range(6):
        b.add(1, p, _item(n))
    assert _batches(b, 0.0) == [[0, 1, 2, 3]]  # full now; the rest waits
    assert b.seconds_until_due(0.0) == pytest.approx(0.010)
    assert _batches(b, 0.005) == []
    assert _batches(b, 0.011) == [[4, 5]]


def test_preferred_batch_sizes() -> None:
    b, p = Batcher(), BatchPolicy(16, 0.010, preferred_batch_sizes=(4, 8))
    for n in range(7):
        b.add(1, p, _item(n))
    assert _batches(b, 0.0) == []  # 7 < 8: wait for a fuller batch
    b.add(1, p, _item(7))
    assert _batches(b, 0.0) == [[0, 1, 2, 3, 4, 5, 6, 7]]  # the largest preferred size: run now
    for n in range(8, 14):
        b.add(1, p, _item(n))
    # delay passed with 6 queued: the largest preferred size that fits (4), then the rest
    assert _batches(b, 0.02) == [[8, 9, 10, 11], [12, 13]]


def test_higher_priority_goes_first_and_shapes_never_mix() -> None:
    b, p = Batcher(), BatchPolicy(2, 0.010)
    b.add(1, p, _item(0, priority=3))
    b.add(1, p, _item(1, priority=3))
    b.add(1, p, _item(2, priority=1))
    b.add(1, p, _item(3, priority=1, shape=(5,)))
    b.add(1, p, _item(4, priority=1))
    assert _batches(b, 0.0) == [[2, 4], [0, 1]]  # a full group never waits behind a lone shape
    assert _batches(b, 0.011) == [[3]]
    assert len(b) == 0


def test_version_config_policy_fields() -> None:
    cfg = VersionConfig(max_batch_size=8, preferred_batch_sizes=(2, 4), priority_levels=3, max_queue_size=10)
    assert cfg.priority_level(0) == 3 and cfg.priority_level(1) == 1
    assert cfg.priority_level(1, cap=2) == 2  # the key caps how high a request may go
    with pytest.raises(ValueError):
        cfg.priority_level(4)
    for bad in (
        {"preferred_batch_sizes": (16,)},
        {"priority_levels": 2, "default_priority_level": 3},
        {"unknown": 1},
        {"max_queue_size": -1},
    ):
        with pytest.raises(ValidationError):
            VersionConfig(max_batch_size=8, **bad)
