"""Model lifecycle on a worker: warmup at load, device-memory accounting, least-recently-used
unloading under a budget (the load/unload commands: workers/common/commands.py)."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from model_store.signature import NUMPY_DTYPES, Signature

log = logging.getLogger("kiln.lifecycle")


class _Runs(Protocol):
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def warmup_inputs(sig: Signature) -> dict[str, np.ndarray]:
    """One small input per tensor: dynamic dimensions as 1, zeros (text for BYTES)."""
    out: dict[str, np.ndarray] = {}
    for spec in sig.inputs:
        shape = tuple(1 if d == -1 else d for d in spec.shape)
        if spec.datatype == "BYTES":
            arr = np.empty(shape, dtype=object)
            arr.fill(b"warmup")
        else:
            arr = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
        out[spec.name] = arr
    return out


def warm(runner: _Runs, sig: Signature) -> None:
    """Run once before the version counts as loaded (first-call allocations, kernel choice)."""
    runner.run(warmup_inputs(sig))


def _cuda() -> Any:
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except ImportError:
        return None


def device_memory_in_use() -> int:
    torch = _cuda()
    return int(torch.cuda.memory_allocated()) if torch is not None else 0


@contextlib.contextmanager
def measured(into: list[int]) -> Iterator[None]:
    """Append the device memory the block kept allocated (0 without CUDA)."""
    before = device_memory_in_use()
    yield
    into.append(max(0, device_memory_in_use() - before))


def release_memory() -> None:
    """After dropping a runner: collect it now and hand cached device memory back."""
    gc.collect()
    torch = _cuda()
    if torch is not None:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def lru_victims(sizes: dict[int, tuple[int, float]], need: int, budget: int, keep: set[int]) -> list[int]:
    """Versions to unload, least recently used first, so that `need` more bytes fit in `budget`.
    `sizes`: version -> (bytes, last used); versions in `keep` are never chosen."""
    if budget <= 0:
        return []
    used = sum(size for size, _ in sizes.values())
    victims: list[int] = []
    for vid, (size, _last) in sorted(sizes.items(), key=lambda kv: kv[1][1]):
        if used + need <= budget:
            break
        if vid in keep:
            continue
        victims.append(vid)
        used -= size
    return victims
