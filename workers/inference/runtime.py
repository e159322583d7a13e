"""What every model runtime shares: the `Runner` interface, the error for one item's input
that a runtime cannot take, what a client may see of a model failure, and how a failed batch
is retried. The runtimes themselves live in runners.py (format -> runtime) and hf_runner.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

log = logging.getLogger("kiln.runner")
T = TypeVar("T")
# an extra output a runner that tokenises may return beside the signature's: the input tokens of
# each row, [N] int64 (hf-encoder). Never a tensor name a signature allows (model_store/signature.py);
# the worker sums each request's rows into its reply (InferReplyMsg.prompt_tokens) and drops it.
PROMPT_TOKENS = "#prompt_tokens"


class Runner(Protocol):
    device: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@runtime_checkable
class AdapterRunner(Protocol):
    """A runner that also serves LoRA adapter versions of its version on its own copy of the
    base (hf-encoder: hf_runner.py; fenced: the same, in its child, through fenced.py)."""

    device: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def add_adapter(self, key: int, data: bytes, capacity: int) -> None: ...

    def run_adapter(self, inputs: dict[str, np.ndarray], key: int) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True, slots=True)
class AdapterRef:
    """An adapter version as the worker runs it: its version id, its bundle's bytes (their
    sha256 checked by the worker), and how many adapters a base holds at most."""

    key: int
    data: bytes
    capacity: int


class AdapterMissing(LookupError):
    """The adapter is not loaded on the runner (never was, or was evicted): send its bytes."""


def run_adapter(runner: Runner, inputs: dict[str, np.ndarray], ref: AdapterRef) -> dict[str, np.ndarray]:
    """A batch of an adapter version on its base's runner, loading the adapter there first if
    it is not (or no longer) loaded."""
    if not isinstance(runner, AdapterRunner):
        raise TypeError("this runner does not serve LoRA adapters")
    for _ in range(3):  # another adapter may evict it between loading and running: try again
        try:
            return runner.run_adapter(inputs, ref.key)
        except AdapterMissing:
            runner.add_adapter(ref.key, ref.data, ref.capacity)
    raise AdapterMissing(ref.key)


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
