"""Format validators for uploaded artifacts. Never pickle.

- ONNX: parsed as protobuf (no code runs), checked, signature read from the graph. External
  data anywhere and custom-op domains are refused (model_store/onnx_check.py).
- TorchScript: must be a TorchScript zip archive (code/ + constants.pkl), never a bare pickle or
  a torch.save() checkpoint; its code is checked against the op policy before it is loaded and
  again after (model_store/torchscript_check.py), then run once on a sample input to check the
  declared signature.
- hf-encoder and hf-causal-lm: safetensors bundles (or, for hf-causal-lm, one GGUF file) with
  bounded configs and no remote code (model_store/hf_encoder.py, model_store/hf_causal_lm.py).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from model_store.errors import InvalidArtifact, public_message
from model_store.limits import ArtifactLimits
from model_store.onnx_check import check_onnx_model
from model_store.signature import NUMPY_DTYPES, Signature, TensorSpec
from model_store.torchscript_check import check_torchscript_archive, check_torchscript_module

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "hf-encoder", "hf-causal-lm")  # what may be uploaded
ADAPTER_FORMAT = "lora-adapter"  # made by fine-tune jobs only (model_store/lora_adapter.py)

_ONNX_TYPES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
}
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def validate(
    fmt: str, path: Path, signature: Signature | None, limits: ArtifactLimits | None = None
) -> Signature:
    """Validate an artifact of the given format and return its signature. Streams from `path`;
    bundles are read under `limits` (the settings' `artifact_limits`; defaults without them)."""
    with path.open("rb") as f:
        head = f.read(4)
    if head[:2] in _PICKLE_MAGIC:
        raise InvalidArtifact("pickle files are refused; upload ONNX or TorchScript")
    if fmt == "onnx":
        return _validate_onnx(path, signature)
    if fmt == "torchscript":
        return _validate_torchscript(path, signature)
    if fmt == "hf-encoder":
        from model_store.hf_encoder import validate_hf_encoder

        return validate_hf_encoder(path, signature, limits or ArtifactLimits())
    if fmt == "hf-causal-lm":
        from model_store.hf_causal_lm import validate_hf_causal_lm

        return validate_hf_causal_lm(path, signature, limits or ArtifactLimits())
    if fmt == "lora-adapter":  # registered by the trainer that made it, never uploaded
        from model_store.lora_adapter import validate_lora_adapter

        return validate_lora_adapter(path, signature, limits or ArtifactLimits())
    raise InvalidArtifact(f"unknown format; expected one of {', '.join(FORMATS)}")


def _onnx_spec(value_info: Any) -> TensorSpec:
    t = value_info.type.tensor_type
    dtype = _ONNX_TYPES.get(t.elem_type)
    if dtype is None:
        raise InvalidArtifact(f"ONNX tensor {value_info.name!r} has an unsupported element type")
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
    return TensorSpec.model_validate({"name": value_info.name, "datatype": dtype, "shape": dims})


def _validate_onnx(path: Path, given: Signature | None) -> Signature:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InvalidArtifact("not a valid ONNX model") from exc
    check_onnx_model(model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise InvalidArtifact(f"ONNX model fails the checker: {str(exc)[:200]}") from exc
    initializers = {i.name for i in model.graph.initializer}
    graph_sig = Signature(
        inputs=tuple(_onnx_spec(v) for v in model.graph.input if v.name not in initializers),
        outputs=tuple(_onnx_spec(v) for v in model.graph.output),
    )
    if given is None:
        return graph_sig
    _check_compatible(given, graph_sig)
    return given


def _check_compatible(given: Signature, graph: Signature) -> None:
    for kind, mine, theirs in (
        ("input", given.inputs, graph.inputs),
        ("output", given.outputs, graph.outputs),
    ):
        if [t.name for t in mine] != [t.name for t in theirs]:
            raise InvalidArtifact(f"signature {kind} names do not match the ONNX graph")
        for a, b in zip(mine, theirs, strict=True):
            if a.datatype != b.datatype or len(a.shape) != len(b.shape):
                raise InvalidArtifact(f"signature {kind} {a.name!r} does not match the ONNX graph")


def _validate_torchscript(path: Path, given: Signature | None) -> Signature:
    if given is None:
        raise InvalidArtifact("TorchScript versions need a signature (inputs and outputs)")
    if not zipfile.is_zipfile(path):
        raise InvalidArtifact("not a TorchScript archive (expected a zip from torch.jit.save)")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    has_code = any("/code/" in n for n in names)
    has_constants = any(n.endswith("/constants.pkl") for n in names)
    if not (has_code and has_constants):
        raise InvalidArtifact("not a TorchScript archive (a torch.save checkpoint or other zip)")
    if any(t.datatype == "BYTES" for t in (*given.inputs, *given.outputs)):
        raise InvalidArtifact("TorchScript versions take numeric tensors only")
    check_torchscript_archive(path.read_bytes())  # before loading: loading runs __setstate__
    _smoke_run_torchscript(path, given)
    return given


def _smoke_run_torchscript(path: Path, sig: Signature) -> None:
    import torch

    from model_store.loading import run_torchscript

    try:
        module = torch.jit.load(io.BytesIO(path.read_bytes()), map_location="cpu")
    except Exception as exc:
        raise InvalidArtifact("TorchScript archive could not be loaded") from exc
    check_torchscript_module(module)
    module.eval()
    sample = {
        t.name: np.zeros(tuple(1 if d == -1 else d for d in t.shape), dtype=NUMPY_DTYPES[t.datatype])
        for t in sig.inputs
    }
    try:
        outputs = run_torchscript(module, sig, sample, torch.device("cpu"))
    except Exception as exc:
        raise InvalidArtifact(
            "TorchScript model failed on a sample input of the declared signature: "
            f"{public_message(exc, 200)}"
        ) from exc
    for spec in sig.outputs:
        arr = outputs[spec.name]
        if arr.dtype != NUMPY_DTYPES[spec.datatype] or not spec.matches_shape(arr.shape):
            raise InvalidArtifact(
                f"TorchScript output {spec.name!r} is {arr.dtype}{list(arr.shape)}, "
                f"not {spec.datatype}{list(spec.shape)} as declared"
            )
