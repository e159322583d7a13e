"""Model runners: onnxruntime and TorchScript. CUDA first when present and asked for, CPU
otherwise; the CUDA execution provider is requested only when a GPU is present."""

from __future__ import annotations

import io
import logging
from typing import Any, Protocol, TypeVar

import numpy as np

from model_store.errors import InvalidArtifact
from model_store.limits import ArtifactLimits
from model_store.loading import run_torchscript
from model_store.onnx_check import check_onnx_bytes
from model_store.registry import ResolvedVersion
from model_store.torchscript_check import check_torchscript_archive, check_torchscript_module
from workers.contract.errors import LoadError

log = logging.getLogger("kiln.runner")
T = TypeVar("T")


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


class Runner(Protocol):
    device: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def preload_runtimes() -> None:
    """Import the runtimes up front: torch's import takes seconds and must not land on a request."""
    import onnxruntime  # noqa: F401

    cuda_available()


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pick_device(preference: str) -> str:
    if preference == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if preference == "cuda":
        raise LoadError("this version asks for CUDA and no GPU is present")
    return "cpu"


class OnnxRunner:
    def __init__(self, version: ResolvedVersion, data: bytes, device: str, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        providers: list[str] = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            device = "cpu"
        self.device = device
        check_onnx_bytes(data)  # again at load: the store may hold bytes that never passed upload
        self._session = ort.InferenceSession(data, sess_options=opts, providers=providers)
        self._outputs = [t.name for t in version.signature.outputs]
        self._text_inputs = [t.name for t in version.signature.inputs if t.datatype == "BYTES"]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._text_inputs:
            inputs = {**inputs, **{n: _as_text(n, inputs[n]) for n in self._text_inputs}}
        results = self._session.run(self._outputs, inputs)
        return dict(zip(self._outputs, results, strict=True))


def _as_text(name: str, arr: np.ndarray) -> np.ndarray:
    """onnxruntime takes string tensors as Python str (it would str() a bytes object)."""
    try:
        flat = [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in arr.reshape(-1)]
    except UnicodeDecodeError as exc:
        raise InputRejected(f"input {name!r}: ONNX string tensors must be UTF-8 text") from exc
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(arr.shape)


class TorchScriptRunner:
    def __init__(self, version: ResolvedVersion, data: bytes, device: str, threads: int) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.device = device
        self._device = torch.device(device)
        check_torchscript_archive(data)  # before loading: loading runs the model's __setstate__
        self._module: Any = torch.jit.load(io.BytesIO(data), map_location=self._device)
        check_torchscript_module(self._module)
        self._module.eval()
        self._sig = version.signature

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_torchscript(self._module, self._sig, inputs, self._device)


def load_local_runner(
    version: ResolvedVersion, data: bytes, threads: int = 0, limits: ArtifactLimits | None = None
) -> Runner:
    """A runner in this process (in a fenced child, or with KILN_FENCE=off)."""
    device = pick_device(version.config.device)
    try:
        if version.format == "onnx":
            return OnnxRunner(version, data, device, threads)
        if version.format == "torchscript":
            return TorchScriptRunner(version, data, device, threads)
        if version.format == "hf-encoder":
            from workers.inference.hf_runner import HFEncoderRunner

            return HFEncoderRunner(version, data, device, threads, limits or ArtifactLimits())
    except LoadError:
        raise
    except InvalidArtifact as exc:
        raise LoadError(f"refused {version.format} model: {exc}") from exc
    except Exception as exc:
        raise LoadError(f"could not load {version.format} model: {type(exc).__name__}") from exc
    raise LoadError(f"no runner for format {version.format!r}")
