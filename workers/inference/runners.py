"""Model runtimes, one per format behind the `Runner` interface (workers/inference/runtime.py),
and the map from format to runtime: onnxruntime, TorchScript, hf-encoder (hf_runner.py). CUDA
first when present and asked for, CPU otherwise; the CUDA execution provider is requested only
when a GPU is present."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from model_store.errors import InvalidArtifact
from model_store.limits import ArtifactLimits
from model_store.loading import run_torchscript
from model_store.onnx_check import check_onnx_bytes
from model_store.registry import ResolvedVersion
from model_store.torchscript_check import check_torchscript_archive, check_torchscript_module
from workers.common.device import cuda_available, pick_device
from workers.contract.errors import LoadError
from workers.inference.runtime import InputRejected, Runner

# (version, artifact bytes, device, threads, limits) -> a loaded runner
RunnerFactory = Callable[[ResolvedVersion, bytes, str, int, ArtifactLimits], Runner]


def preload_runtimes() -> None:
    """Import the runtimes up front: torch's import takes seconds and must not land on a request."""
    import onnxruntime  # noqa: F401

    cuda_available()


class OnnxRunner:
    def __init__(
        self, version: ResolvedVersion, data: bytes, device: str, threads: int, _limits: ArtifactLimits
    ) -> None:
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
    def __init__(
        self, version: ResolvedVersion, data: bytes, device: str, threads: int, _limits: ArtifactLimits
    ) -> None:
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


def _hf_encoder(
    version: ResolvedVersion, data: bytes, device: str, threads: int, limits: ArtifactLimits
) -> Runner:
    from workers.inference.hf_runner import HFEncoderRunner  # torch and tokenizers: only when used

    return HFEncoderRunner(version, data, device, threads, limits)


RUNTIMES: dict[str, RunnerFactory] = {
    "onnx": OnnxRunner,
    "torchscript": TorchScriptRunner,
    "hf-encoder": _hf_encoder,
}


def load_local_runner(
    version: ResolvedVersion, data: bytes, threads: int = 0, limits: ArtifactLimits | None = None
) -> Runner:
    """A runner in this process (in a fenced child, or with KILN_FENCE=off)."""
    device = pick_device(version.config.device)
    factory = RUNTIMES.get(version.format)
    if factory is None:
        raise LoadError(f"no runner for format {version.format!r}")
    try:
        return factory(version, data, device, threads, limits or ArtifactLimits())
    except LoadError:
        raise
    except InvalidArtifact as exc:
        raise LoadError(f"refused {version.format} model: {exc}") from exc
    except Exception as exc:
        raise LoadError(f"could not load {version.format} model: {type(exc).__name__}") from exc
