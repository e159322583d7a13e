"""Dynamic batching: one queue per model version; a batch runs when full or when the oldest
item has waited max_queue_delay. Items join a batch only with items of the same non-batch
shape. Pure logic over a monotonic clock, no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int  # in items (rows of the batch dimension); <= 1 means no batching
    max_queue_delay_s: float

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1


@dataclass(slots=True)
class Item:
    """One request, decoded and validated, waiting to run."""

    key: Any  # whatever the caller needs back (the stream entry, the message)
    inputs: dict[str, np.ndarray]
    count: int  # rows along the batch dimension (1 when not batching)
    shape_key: tuple[tuple[int, ...], ...]
    arrived: float  # monotonic seconds
    deadline: float = float("inf")  # monotonic seconds


@dataclass(slots=True)
class _Queue:
    policy: BatchPolicy
    items: deque[Item] = field(default_factory=deque)


class Batcher:
    def __init__(self) -> None:
        self._queues: dict[int, _Queue] = {}

    def add(self, version_id: int, policy: BatchPolicy, item: Item) -> None:
        q = self._queues.get(version_id)
        if q is None:
            q = self._queues[version_id] = _Queue(policy)
        q.policy = policy
        q.items.append(item)

    def __len__(self) -> int:
        return sum(len(q.items) for q in self._queues.values())

    def seconds_until_due(self, now: float) -> float | None:
        """Time until the earliest queue is due (0 if one is ready now); None when empty."""
        best: float | None = None
        for q in self._queues.values():
            if not q.items:
                continue
            head = q.items[0]
            due = 0.0 if self._full(q, head) else max(0.0, head.arrived + q.policy.max_queue_delay_s - now)
            best = due if best is None else min(best, due)
        return best

    def ready(self, now: float, *, flush: bool = False) -> Iterator[tuple[int, list[Item]]]:
        """Yield (version_id, items) for every batch that is due; flush=True empties all."""
        for version_id, q in self._queues.items():
            while q.items:
                head = q.items[0]
                waited = now >= head.arrived + q.policy.max_queue_delay_s
                if not (flush or waited or self._full(q, head)):
                    break
                yield version_id, self._take(q, head)

    def drain(self) -> list[Item]:
        out = [item for q in self._queues.values() for item in q.items]
        self._queues.clear()
        return out

    @staticmethod
    def _compatible(q: _Queue, head: Item) -> Iterator[Item]:
        if not q.policy.batching:
            yield head
            return
        for item in q.items:
            if item.shape_key == head.shape_key:
                yield item

    def _full(self, q: _Queue, head: Item) -> bool:
        if not q.policy.batching:
            return True
        total = 0
        for item in self._compatible(q, head):
            total += item.count
            if total >= q.policy.max_batch_size:
                return True
        return False

    def _take(self, q: _Queue, head: Item) -> list[Item]:
        batch: list[Item] = []
        total = 0
        for item in list(self._compatible(q, head)):
            if batch and total + item.count > q.policy.max_batch_size:
                break
            batch.append(item)
            total += item.count
        for item in batch:
            q.items.remove(item)
        return batch
