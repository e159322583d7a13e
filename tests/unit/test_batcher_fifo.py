from __future__ import annotations

import numpy as np

from workers.inference.batcher import Batcher, BatchPolicy, Item

POLICY = BatchPolicy(max_batch_size=4, max_queue_delay_s=0.010)


def item(n: int = 1, t: float = 0.0, width: int = 3, key: object = None) -> Item:
    return Item(
        key=key, inputs={"x": np.zeros((n, width), np.float32)}, count=n, shape_key=((width,),), arrived=t
    )


def test_full_batch_runs_at_once() -> None:
    b = Batcher()
    for i in range(4):
        b.add(1, POLICY, item(key=i))
    assert b.seconds_until_due(0.0) == 0.0
    ((vid, batch),) = list(b.ready(0.0))
    assert vid == 1 and [i.key for i in batch] == [0, 1, 2, 3]
    assert len(b) == 0


def test_partial_batch_waits_for_the_delay() -> None:
    b = Batcher()
    b.add(1, POLICY, item(t=0.0))
    b.add(1, POLICY, item(t=0.004))
    assert list(b.ready(0.005)) == []
    assert abs(b.seconds_until_due(0.005) - 0.005) < 1e-9
    ((_, batch),) = list(b.ready(0.010))
    assert len(batch) == 2


def test_batches_never_exceed_max_items_and_keep_order() -> None:
    b = Batcher()
    for i, n in enumerate([3, 2, 1, 4]):
        b.add(1, POLICY, item(n=n, key=i))
    batches = [[i.key for i in batch] for _, batch in b.ready(1.0)]
    assert batches == [[0], [1, 2], [3]]  # strictly FIFO: a batch never jumps the queue
    for _, batch in b.ready(1.0):
        assert sum(i.count for i in batch) <= 4


def test_only_same_shapes_batch_together() -> None:
    b = Batcher()
    b.add(1, POLICY, item(width=3, key="a"))
    b.add(1, POLICY, item(width=5, key="b"))
    b.add(1, POLICY, item(width=3, key="c"))
    batches = [[i.key for i in batch] for _, batch in b.ready(1.0)]
    assert batches == [["a", "c"], ["b"]]


def test_no_batching_policy_runs_each_item_alone_at_once() -> None:
    b = Batcher()
    single = BatchPolicy(max_batch_size=1, max_queue_delay_s=10)
    b.add(2, single, item(key=1))
    b.add(2, single, item(key=2))
    assert b.seconds_until_due(0.0) == 0.0
    assert [[i.key for i in batch] for _, batch in b.ready(0.0)] == [[1], [2]]


def test_versions_are_batched_separately_and_flush_empties_all() -> None:
    b = Batcher()
    b.add(1, POLICY, item(key="v1"))
    b.add(2, POLICY, item(key="v2"))
    out = {vid: [i.key for i in batch] for vid, batch in b.ready(0.0, flush=True)}
    assert out == {1: ["v1"], 2: ["v2"]}
    assert b.seconds_until_due(0.0) is None
