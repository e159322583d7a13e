"""Open Inference Protocol (KServe v2) REST codec: JSON request -> validated raw tensors,
reply -> JSON response. Every input is checked against the version's signature here, before
anything is enqueued."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from model_store.registry import ResolvedVersion
from model_store.signature import NUMPY_DTYPES, Signature
from service.errors import InvalidInput, PayloadTooLarge
from workers.contract import InferReplyMsg, TensorMeta
from workers.tensors import element_count, from_bytes, to_bytes

_KINDS: dict[str, str] = {"BOOL": "b", "BYTES": "USO"}
_KINDS.update({dt: "iu" for dt in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")})
_KINDS.update({dt: "iuf" for dt in ("FP16", "FP32", "FP64")})
MAX_DIMS = 16


@dataclass(slots=True)
class ParsedRequest:
    id: str | None
    inputs: list[TensorMeta]
    tensors: list[bytes]
    outputs: list[str] | None
    parameters: dict[str, Any] = field(default_factory=dict)


def _fail(msg: str) -> InvalidInput:
    return InvalidInput(msg)


def _shape(name: str, raw: Any, max_elements: int) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_DIMS:
        raise _fail(f"input {name!r}: shape must be a list of at most {MAX_DIMS} integers")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 2**31 for d in raw):
        raise _fail(f"input {name!r}: shape dimensions must be non-negative integers")
    shape = tuple(raw)
    if element_count(shape) > max_elements:
        raise PayloadTooLarge(f"input {name!r}: more than {max_elements} elements")
    return shape


def _to_array(name: str, datatype: str, data: Any, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(data, list):
        raise _fail(f"input {name!r}: data must be a list")
    try:
        arr = np.asarray(data)
    except ValueError as exc:
        raise _fail(f"input {name!r}: data is ragged or malformed") from exc
    if arr.size and arr.dtype.kind not in _KINDS[datatype]:
        raise _fail(f"input {name!r}: data is not {datatype}")
    if arr.size != element_count(shape):
        raise _fail(f"input {name!r}: {arr.size} elements given for shape {list(shape)}")
    if datatype == "BYTES":
        flat = [x.encode() if isinstance(x, str) else bytes(x) for x in arr.reshape(-1)]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    if arr.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise _fail(f"input {name!r}: values do not fit {datatype}")
    return arr.astype(dtype).reshape(shape)


def parse_infer_request(body: bytes, sig: Signature, max_elements: int) -> ParsedRequest:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _fail("request body is not valid JSON (or is nested too deeply)") from exc
    if not isinstance(doc, dict):
        raise _fail("request body must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _fail("'inputs' must be a non-empty list")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise _fail("'parameters' must be an object")
    by_name: dict[str, tuple[TensorMeta, bytes]] = {}
    for raw in raw_inputs:
        meta, buf = _parse_input(raw, sig, max_elements)
        if meta.name in by_name:
            raise _fail(f"input {meta.name!r} given twice")
        by_name[meta.name] = (meta, buf)
    missing = [t.name for t in sig.inputs if t.name not in by_name]
    if missing:
        raise _fail(f"missing input(s): {', '.join(repr(m) for m in missing)}")
    ordered = [by_name[t.name] for t in sig.inputs]
    return ParsedRequest(
        id=_request_id(doc.get("id")),
        inputs=[m for m, _ in ordered],
        tensors=[b for _, b in ordered],
        outputs=_requested_outputs(doc.get("outputs"), sig),
        parameters=params,
    )


def _request_id(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > 256:
        raise _fail("'id' must be a string of at most 256 characters")
    return raw


def _parse_input(raw: Any, sig: Signature, max_elements: int) -> tuple[TensorMeta, bytes]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise _fail("each input needs a 'name'")
    name = raw["name"]
    spec = sig.input(name)
    if spec is None:
        raise _fail(f"unknown input {name[:64]!r}; expected {[t.name for t in sig.inputs]}")
    datatype = raw.get("datatype")
    if datatype != spec.datatype:
        raise _fail(f"input {name!r}: datatype must be {spec.datatype}, got {str(datatype)[:16]!r}")
    shape = _shape(name, raw.get("shape"), max_elements)
    if not spec.matches_shape(shape):
        raise _fail(f"input {name!r}: shape {list(shape)} does not match {list(spec.shape)}")
    arr = _to_array(name, datatype, raw.get("data"), shape)
    return TensorMeta(name, datatype, shape), to_bytes(arr, datatype)


def _requested_outputs(raw: Any, sig: Signature) -> list[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _fail("'outputs' must be a list")
    names = []
    for out in raw:
        name = out.get("name") if isinstance(out, dict) else None
        if not isinstance(name, str) or sig.output(name) is None:
            raise _fail(f"unknown output {str(name)[:64]!r}; expected {[t.name for t in sig.outputs]}")
        names.append(name)
    return names or None


def _json_data(meta: TensorMeta, buf: bytes) -> Any:
    arr = from_bytes(buf, meta.datatype, meta.shape).reshape(-1)
    if meta.datatype == "BYTES":
        return [b.decode("utf-8", errors="replace") for b in arr]
    return arr


def encode_response(version: ResolvedVersion, request_id: str | None, reply: InferReplyMsg) -> bytes:
    body: dict[str, Any] = {"model_name": version.model, "model_version": str(version.version)}
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = [
        {"name": m.name, "datatype": m.datatype, "shape": list(m.shape), "data": _json_data(m, buf)}
        for m, buf in zip(reply.outputs, reply.tensors, strict=True)
    ]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def model_metadata(version: ResolvedVersion, versions: list[int]) -> dict[str, Any]:
    sig = version.signature
    return {
        "name": version.model,
        "versions": [str(v) for v in versions],
        "platform": {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}.get(
            version.format, version.format
        ),
        "inputs": [t.model_dump(mode="json") for t in sig.inputs],
        "outputs": [t.model_dump(mode="json") for t in sig.outputs],
    }
