"""How much memory loading a model version took: device memory on CUDA (torch's allocator),
resident set size on CPU. Approximate by nature (other allocations may interleave)."""

from __future__ import annotations

import sys

import psutil


def snapshot() -> tuple[int, int]:
    """(resident bytes, CUDA bytes allocated by torch, 0 when torch has not touched CUDA)."""
    return psutil.Process().memory_info().rss, _cuda_allocated()


def _cuda_allocated() -> int:
    torch = sys.modules.get("torch")  # never import torch just to ask
    try:
        if torch is not None and torch.cuda.is_initialized():
            return int(torch.cuda.memory_allocated())
    except Exception:
        return 0
    return 0


def used_since(before: tuple[int, int], device: str) -> int | None:
    try:
        after = snapshot()
    except Exception:
        return None
    index = 1 if device.startswith("cuda") else 0
    return max(after[index] - before[index], 0)
