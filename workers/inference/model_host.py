"""The inside of a fenced model instance (runs in a `model_store.fence.FencedChild`).

`serve(channel, args)` reads the version's artifact from its blob file (the only artifact path
the fence lets it read), checks its sha256, builds the ordinary in-process runner
(workers.inference.runners: onnxruntime, TorchScript, hf-encoder) and then answers `run` frames until the
worker closes the pipe. Its first frame says whether the load worked.

Frames: a header naming each tensor (name, dtype, shape) and one raw buffer per tensor: numeric
arrays as their little-endian element bytes, text/object arrays as 4-byte length-prefixed
elements (the Open Inference Protocol's BYTES encoding, workers.contract.tensors). The parent decodes
what the child sends with these functions only: no pickle crosses back.
"""

from __future__ import annotations

import contextlib
import hashlib
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_store.channel import Channel
from model_store.signature import NUMPY_DTYPES
from workers.contract.tensors import TensorDecodeError, from_bytes, to_bytes

_NUMERIC = {name: dtype for name, dtype in NUMPY_DTYPES.items() if name != "BYTES"}
_BY_DTYPE = {dt: name for name, dt in _NUMERIC.items()}

# kinds of model failure, so the worker can split and retry as it does in-process
OOM, REJECTED, MODEL, LOAD = "oom", "rejected", "model", "load"
MISSING = "missing"  # a run of a LoRA adapter this child does not hold (the worker sends it)


def encode(arrays: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """(header entries, buffers) for named arrays; text and object arrays travel as BYTES."""
    metas: list[dict[str, Any]] = []
    bufs: list[bytes] = []
    for name, value in arrays.items():
        arr = np.asarray(value)
        datatype = "BYTES" if arr.dtype.kind in "OUS" else _BY_DTYPE.get(arr.dtype.newbyteorder("="))
        if datatype is None:
            raise TypeError(f"output {name!r} has an unsupported dtype {arr.dtype}")
        metas.append({"name": str(name), "datatype": datatype, "shape": [int(d) for d in arr.shape]})
        bufs.append(to_bytes(arr, datatype))
    return metas, bufs


def decode(metas: object, bufs: Sequence[bytes | memoryview]) -> dict[str, np.ndarray]:
    """The arrays a frame carries; anything malformed is a TensorDecodeError."""
    if not isinstance(metas, list) or len(metas) != len(bufs):
        raise TensorDecodeError("malformed tensor frame")
    out: dict[str, np.ndarray] = {}
    for meta, buf in zip(metas, bufs, strict=True):
        if not isinstance(meta, dict):
            raise TensorDecodeError("malformed tensor frame")
        name, datatype, shape = meta.get("name"), meta.get("datatype"), meta.get("shape")
        if not isinstance(name, str) or (datatype != "BYTES" and datatype not in _NUMERIC):
            raise TensorDecodeError("malformed tensor frame")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise TensorDecodeError("malformed tensor shape")
        out[name] = from_bytes(buf, datatype, tuple(shape))
    return out


def failure(exc: BaseException) -> dict[str, str]:
    """The header that reports a model failure: its kind and a message a client may see."""
    from model_store.errors import public_message
    from workers.inference.runtime import (
        AdapterMissing,
        InputRejected,
        is_out_of_memory,
        release_cached_memory,
    )

    if isinstance(exc, AdapterMissing):
        return {"error": "adapter not loaded", "kind": MISSING}
    if isinstance(exc, MemoryError) or is_out_of_memory(exc):
        release_cached_memory()
        return {"error": f"out of memory: {public_message(exc)}", "kind": OOM}
    kind = REJECTED if isinstance(exc, InputRejected) else MODEL
    return {"error": public_message(exc), "kind": kind}


def read_verified(path: str | Path, sha256: str) -> bytes:
    """The artifact's bytes, refused if they no longer hash to the recorded digest."""
    from workers.contract.errors import LoadError

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise LoadError("artifact bytes are missing from the store") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise LoadError("artifact bytes do not match the sha256 recorded at registration")
    return data


def _load(args: dict[str, Any]) -> Any:
    from workers.inference.runners import load_local_runner

    data = read_verified(args["path"], args["sha256"])
    return load_local_runner(args["version"], data, args["threads"], args["limits"])


def _footprint(device: str) -> int:
    """Peak resident bytes of this process (the fence hides /proc, so not psutil), or on CUDA
    the device memory it holds."""
    from workers.inference import memory

    if device.startswith("cuda"):
        return memory._nvml_process_bytes() or memory._torch_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tie_lifetime() -> None:
    """The worker decides when this process ends (EOF on the pipe, or SIGKILL past a deadline):
    a SIGTERM or Ctrl-C sent to the worker's process group must not fail the batches the worker
    is still finishing; and if the fork server (so the worker) is gone, this process goes too."""
    import ctypes
    import os
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        raise SystemExit(0)


def serve(ch: Channel, args: dict[str, Any]) -> None:
    """Load one model instance, say so, then answer `run` frames until the pipe closes."""
    from workers.contract.errors import LoadError

    _tie_lifetime()
    before = _footprint("cpu")
    try:
        runner = _load(args)
    except LoadError as exc:
        ch.send({"error": str(exc)[:300], "kind": LOAD})
        return
    except Exception as exc:
        ch.send({"error": f"could not load the model: {type(exc).__name__}", "kind": LOAD})
        return
    used = _footprint(runner.device) - (0 if runner.device.startswith("cuda") else before)
    ch.send({"loaded": True, "device": runner.device, "bytes": max(used, 0)})
    while True:
        header, bufs = ch.recv()
        if header.get("op") == "adapter":
            ch.send(_add_adapter(runner, header, bufs))
            continue
        try:
            outputs = _run(runner, header, bufs)
            metas, out = encode(outputs)
        except Exception as exc:
            ch.send(failure(exc))
            continue
        ch.send({"outputs": metas}, out)


def _run(runner: Any, header: dict[str, Any], bufs: Sequence[bytes | memoryview]) -> dict[str, np.ndarray]:
    inputs = decode(header.get("inputs"), bufs)
    adapter = header.get("adapter")
    if adapter is None:
        return runner.run(inputs)
    if type(adapter) is not int or not hasattr(runner, "run_adapter"):
        raise TypeError("this model does not serve LoRA adapters")
    return runner.run_adapter(inputs, adapter)


def _add_adapter(runner: Any, header: dict[str, Any], bufs: Sequence[bytes | memoryview]) -> dict[str, Any]:
    """Load the adapter the worker sent (its bytes: the frame's one buffer) beside the base."""
    from model_store.errors import public_message

    key, capacity = header.get("adapter"), header.get("capacity")
    if type(key) is not int or type(capacity) is not int or len(bufs) != 1:
        return {"error": "malformed adapter frame", "kind": LOAD}
    if not hasattr(runner, "add_adapter"):
        return {"error": "this model does not serve LoRA adapters", "kind": LOAD}
    try:
        runner.add_adapter(key, bytes(bufs[0]), capacity)
    except Exception as exc:
        return {"error": f"the adapter could not be loaded: {public_message(exc)}", "kind": LOAD}
    return {"added": True}
