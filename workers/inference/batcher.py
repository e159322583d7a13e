"""Dynamic batching: one queue per model version; a batch runs when full (max_batch_size, or
the largest preferred batch size), or when the oldest item has waited max_queue_delay. Items
join a batch only with items of the same non-batch shape; higher priority (a lower level
number) goes first. Pure logic over a monotonic clock, no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Capacity = Callable[[int], bool]  # version id -> whether a model instance is free for a batch
BLOCKED_RECHECK_S = 0.005


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int  # in items (rows of the batch dimension); <= 1 means no batching
    max_queue_delay_s: float
    preferred_batch_sizes: tuple[int, ...] = ()

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    @property
    def run_at(self) -> int:
        """Rows at which a batch runs at once instead of waiting out the delay."""
        if self.preferred_batch_sizes:
            return min(max(self.preferred_batch_sizes), self.max_batch_size)
        return self.max_batch_size

    def target(self, available: int) -> int:
        """Rows to take when a batch is due: all the cap allows, else the largest preferred
        size that the queue can fill, else what there is."""
        if available >= self.max_batch_size:
            return self.max_batch_size
        fitting = [p for p in self.preferred_batch_sizes if p <= available]
        return max(fitting) if fitting else available


@dataclass(slots=True)
class Item:
    """One request, decoded and validated, waiting to run."""

    key: Any  # whatever the caller needs back (the stream entry, the message)
    inputs: dict[str, np.ndarray]
    count: int  # rows along the batch dimension (1 when not batching)
    shape_key: tuple[tuple[int, ...], ...]
    arrived: float  # monotonic seconds
    deadline: float = float("inf")  # monotonic seconds
    priority: int = 0  # lower runs first (levels count down from 1, the highest)


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

    def pending(self, version_id: int) -> int:
        q = self._queues.get(version_id)
        return len(q.items) if q is not None else 0

    def __len__(self) -> int:
        return sum(len(q.items) for q in self._queues.values())

    def seconds_until_due(self, now: float, capacity: Capacity | None = None) -> float | None:
        """Time until the earliest queue is due (0 if one is ready now); None when empty.
        A queue whose version has no free instance is looked at again in BLOCKED_RECHECK_S."""
        best: float | None = None
        for version_id, q in self._queues.items():
            if not q.items:
                continue
            oldest = q.items[0]
            full = self._first_full(q) is not None
            due = 0.0 if full else max(0.0, oldest.arrived + q.policy.max_queue_delay_s - now)
            if capacity is not None and not capacity(version_id):
                due = max(due, BLOCKED_RECHECK_S)
            best = due if best is None else min(best, due)
        return best

    def ready(
        self, now: float, *, flush: bool = False, capacity: Capacity | None = None
    ) -> Iterator[tuple[int, list[Item]]]:
        """Yield (version_id, items) for every batch that is due and has a free instance
        (`capacity`, asked before each batch); flush=True empties all."""
        for version_id, q in self._queues.items():
            while q.items and (flush or capacity is None or capacity(version_id)):
                waited = flush or now >= q.items[0].arrived + q.policy.max_queue_delay_s
                head = self._head(q) if waited else self._first_full(q)
                if head is None:
                    break
                yield version_id, self._take(q, head)

    @staticmethod
    def _head(q: _Queue) -> Item:
        """The first item of the highest priority present (the oldest among equals)."""
        return min(q.items, key=lambda item: item.priority)

    def _first_full(self, q: _Queue) -> Item | None:
        """The head of the highest-priority shape group that is full, if any is."""
        seen: set[tuple[tuple[int, ...], ...]] = set()
        for item in sorted(q.items, key=lambda i: i.priority):
            if item.shape_key in seen:
                continue
            seen.add(item.shape_key)
            if self._full(q, item):
                return item
        return None

    @staticmethod
    def _compatible(q: _Queue, head: Item) -> list[Item]:
        if not q.policy.batching:
            return [head]
        same = [item for item in q.items if item.shape_key == head.shape_key]
        return sorted(same, key=lambda item: item.priority)  # stable: arrival order within a level

    def _full(self, q: _Queue, head: Item) -> bool:
        if not q.policy.batching:
            return True
        return sum(item.count for item in self._compatible(q, head)) >= q.policy.run_at

    def _take(self, q: _Queue, head: Item) -> list[Item]:
        candidates = self._compatible(q, head)
        target = q.policy.target(sum(item.count for item in candidates))
        batch: list[Item] = []
        total = 0
        for item in candidates:
            if batch and total + item.count > target:
                break
            batch.append(item)
            total += item.count
        for item in batch:
            q.items.remove(item)
        return batch
