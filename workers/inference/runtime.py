"""What every model runtime shares: the `Runner` interface, the error for one item's input
that a runtime cannot take, what a client may see of a model failure, and how a failed batch
is retried. The runtimes themselves live in runners.py (format -> runtime) and hf_runner.py."""

from __future__ import annotations

import logging
from typing import Protocol, TypeVar

import numpy as np

log = logging.getLogger("kiln.runner")
T = TypeVar("T")


class Runner(Protocol):
    device: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class InputRejected(ValueError):
    """One item's input that this runtime cannot take (the item fails alone, as invalid input)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (torch) or onnxruntime allocation failure: the batch was too big, not bad input."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:
        pass
    text = str(exc).lower()
    return "out of memory" in text or "failed to allocate memory" in text


def release_cached_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception as exc:
        log.warning("could not release cached device memory: %s", type(exc).__name__)


def split_failed(exc: BaseException, items: list[T]) -> list[list[T]]:
    """How to retry a failed batch: in halves after out-of-memory (device memory freed first),
    else each item alone so that one bad item fails alone."""
    if is_out_of_memory(exc) and len(items) > 1:
        release_cached_memory()
        half = len(items) // 2
        return [items[:half], items[half:]]
    return [[item] for item in items]
