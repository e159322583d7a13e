"""Open Inference Protocol (KServe v2) REST codec, binary tensor data extension included.

Request: a JSON header, optionally followed by raw tensor bytes (`Inference-Header-Content-Length`
says where the JSON ends; each binary input says its `binary_data_size`). Every input is checked
against the version's signature here, before anything is enqueued. Binary inputs already are the
wire format (little-endian elements; BYTES = 4-byte LE length + bytes), so they are passed on as
they came. Response: JSON, or a JSON header plus raw output bytes for the outputs asked for in
binary (`binary_data` per output, `binary_data_output` for all).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from model_store.registry import ResolvedVersion
from model_store.signature import NUMPY_DTYPES, Signature, TensorSpec
from service.errors import InvalidInput, PayloadTooLarge
from service.inference.oip_bytes import BytesLimits, check_count, check_wire, from_json
from workers.contract.messages import InferReplyMsg, TensorMeta
from workers.contract.tensors import TensorDecodeError, element_count, from_bytes, to_bytes

_KINDS: dict[str, str] = {"BOOL": "b"}  # BYTES: service/inference/oip_bytes.py
_KINDS.update({dt: "iu" for dt in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")})
_KINDS.update({dt: "iuf" for dt in ("FP16", "FP32", "FP64")})
MAX_DIMS = 16
HEADER_LENGTH = "inference-header-content-length"
BINARY_MEDIA_TYPE = "application/octet-stream"
_UNSUPPORTED_TENSOR_PARAMS = ("shared_memory_region", "classification")
_DEFAULT_BYTES = BytesLimits()


@dataclass(slots=True)
class ParsedRequest:
    id: str | None
    inputs: list[TensorMeta]
    tensors: list[bytes]
    outputs: list[str] | None
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_outputs: dict[str, bool] = field(default_factory=dict)  # per requested output
    binary_default: bool = False  # `binary_data_output`: outputs not asked for by name

    def binary(self, output: str) -> bool:
        return self.binary_outputs.get(output, self.binary_default)


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    body: bytes
    header_length: int | None = None  # set when binary output bytes follow the JSON header
    prompt_tokens: int = 0  # the input's tokens, where the model tokenised it (hf-encoder)

    @property
    def headers(self) -> dict[str, str]:
        if self.header_length is None:
            return {}
        return {"Inference-Header-Content-Length": str(self.header_length)}

    @property
    def media_type(self) -> str:
        return "application/json" if self.header_length is None else BINARY_MEDIA_TYPE


def _fail(msg: str) -> InvalidInput:
    return InvalidInput(msg)


# body framing ---------------------------------------------------------------------------------
def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo `Content-Encoding: gzip|deflate` (what stock clients may send), bounded by `limit`."""
    enc = (content_encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc not in ("gzip", "deflate"):
        raise _fail(f"unsupported Content-Encoding {enc[:16]!r}")
    inflater = zlib.decompressobj(wbits=31 if enc == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise _fail(f"request body is not valid {enc} data") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body is over the {limit}-byte limit")
    return out


def header_length(raw: str | None, body_len: int) -> int | None:
    if raw is None:
        return None
    if not raw.strip().isdigit() or not 0 < int(raw) <= body_len:
        raise _fail("Inference-Header-Content-Length must be an integer within the body length")
    return int(raw)


class _BinaryTail:
    """The raw tensor bytes after the JSON header, handed out in input order."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, name: str, size: Any) -> bytes:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _fail(f"input {name!r}: binary_data_size must be a non-negative integer")
        if self.pos + size > len(self.data):
            raise _fail(f"input {name!r}: binary_data_size runs past the end of the body")
        chunk = bytes(self.data[self.pos : self.pos + size])
        self.pos += size
        return chunk

    def check_consumed(self) -> None:
        if self.pos != len(self.data):
            raise _fail(f"{len(self.data) - self.pos} bytes of binary data belong to no input")


# inputs -----------------------------------------------------------------------------------------
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
        if datatype == "UINT64" and arr.dtype.kind in "fO":  # integers past int64 come back float
            arr = _uint64(data)
    except (ValueError, OverflowError, TypeError) as exc:
        raise _fail(f"input {name!r}: data is ragged or malformed") from exc
    if arr.size and arr.dtype.kind not in _KINDS[datatype]:
        raise _fail(f"input {name!r}: data is not {datatype}")
    if arr.size != element_count(shape):
        raise _fail(f"input {name!r}: {arr.size} elements given for shape {list(shape)}")
    dtype = NUMPY_DTYPES[datatype]
    if arr.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise _fail(f"input {name!r}: values do not fit {datatype}")
    return arr.astype(dtype).reshape(shape)


def _uint64(data: list[Any]) -> np.ndarray:
    flat = np.asarray(data, dtype=object).reshape(-1)
    if not all(type(x) is int for x in flat):
        raise ValueError("not integers")
    return np.asarray(data, dtype=np.uint64)


def _check_binary(name: str, datatype: str, shape: tuple[int, ...], buf: bytes) -> bytes:
    try:
        from_bytes(buf, datatype, shape)
    except TensorDecodeError as exc:
        raise _fail(f"input {name!r}: binary data does not fit {datatype}{list(shape)}: {exc}") from exc
    return buf


def _tensor_params(owner: str, raw: dict[str, Any]) -> dict[str, Any]:
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise _fail(f"{owner}: 'parameters' must be an object")
    for bad in _UNSUPPORTED_TENSOR_PARAMS:
        if params.get(bad):
            raise _fail(f"{owner}: parameter {bad!r} is not supported")
    return params


def _input_spec(raw: Any, sig: Signature) -> TensorSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise _fail("each input needs a 'name'")
    name = raw["name"]
    spec = sig.input(name)
    if spec is None:
        raise _fail(f"unknown input {name[:64]!r}; expected {[t.name for t in sig.inputs]}")
    datatype = raw.get("datatype")
    if datatype != spec.datatype:
        raise _fail(f"input {name!r}: datatype must be {spec.datatype}, got {str(datatype)[:16]!r}")
    return spec


def _parse_input(
    raw: Any, sig: Signature, max_elements: int, tail: _BinaryTail, limits: BytesLimits
) -> tuple[TensorMeta, bytes]:
    spec = _input_spec(raw, sig)
    name, datatype = spec.name, spec.datatype
    shape = _shape(name, raw.get("shape"), max_elements)
    if not spec.matches_shape(shape):
        raise _fail(f"input {name!r}: shape {list(shape)} does not match {list(spec.shape)}")
    params = _tensor_params(f"input {name!r}", raw)
    meta = TensorMeta(name, datatype, shape)
    if datatype == "BYTES":  # bounded by count before any data is looked at
        check_count(name, element_count(shape), limits)
    if "binary_data_size" in params:
        if "data" in raw:
            raise _fail(f"input {name!r}: give either 'data' or binary_data_size, not both")
        buf = tail.take(name, params["binary_data_size"])
        if datatype == "BYTES":
            check_wire(name, buf, element_count(shape), limits)
            return meta, buf
        return meta, _check_binary(name, datatype, shape, buf)
    if datatype == "BYTES":
        return meta, from_json(name, raw.get("data"), element_count(shape), limits)
    return meta, to_bytes(_to_array(name, datatype, raw.get("data"), shape), datatype)


# the request --------------------------------------------------------------------------------------
def _json_error(exc: orjson.JSONDecodeError, part: str, size: int) -> InvalidInput:
    """Say what is wrong and where: an empty body, or the parser's message with its position."""
    if size == 0:
        return _fail(f"request {part} is empty: send the inference request as JSON")
    where = f"line {exc.lineno} column {exc.colno} (char {exc.pos})"
    return _fail(f"request {part} is not valid JSON: {exc.msg} at {where}")


def parse_infer_request(
    body: bytes,
    sig: Signature,
    max_elements: int,
    header_len: int | None = None,
    bytes_limits: BytesLimits | None = None,
) -> ParsedRequest:
    view = memoryview(body)
    json_part = view if header_len is None else view[:header_len]
    tail = _BinaryTail(view[len(json_part) :])
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise _json_error(exc, "body" if header_len is None else "JSON header", len(json_part)) from exc
    if not isinstance(doc, dict):
        raise _fail("request body must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _fail("'inputs' must be a non-empty list")
    params = _request_params(doc.get("parameters"))
    by_name: dict[str, tuple[TensorMeta, bytes]] = {}
    limits = bytes_limits or _DEFAULT_BYTES
    for raw in raw_inputs:
        meta, buf = _parse_input(raw, sig, max_elements, tail, limits)
        if meta.name in by_name:
            raise _fail(f"input {meta.name!r} given twice")
        by_name[meta.name] = (meta, buf)
    tail.check_consumed()
    missing = [t.name for t in sig.inputs if t.name not in by_name]
    if missing:
        raise _fail(f"missing input(s): {', '.join(repr(m) for m in missing)}")
    ordered = [by_name[t.name] for t in sig.inputs]
    outputs, binary = _requested_outputs(doc.get("outputs"), sig)
    return ParsedRequest(
        id=_request_id(doc.get("id")),
        inputs=[m for m, _ in ordered],
        tensors=[b for _, b in ordered],
        outputs=outputs,
        parameters=params,
        binary_outputs=binary,
        binary_default=params.get("binary_data_output", False),
    )


def _request_params(raw: Any) -> dict[str, Any]:
    params = raw or {}
    if not isinstance(params, dict):
        raise _fail("'parameters' must be an object")
    if not isinstance(params.get("binary_data_output", False), bool):
        raise _fail("parameter 'binary_data_output' must be a boolean")
    return params


def request_timeout_s(params: dict[str, Any], default_s: float, max_s: float) -> float:
    """The request's own `timeout` (microseconds, as Triton's clients send it), else the default;
    never past the server's maximum."""
    raw = params.get("timeout")
    if raw is None:
        return min(default_s, max_s)
    if not isinstance(raw, int) or isinstance(raw, bool) or raw <= 0:
        raise _fail("parameter 'timeout' must be a positive integer (microseconds)")
    return min(raw / 1e6, max_s)


def _request_id(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > 256:
        raise _fail("'id' must be a string of at most 256 characters")
    return raw


def _requested_outputs(raw: Any, sig: Signature) -> tuple[list[str] | None, dict[str, bool]]:
    if raw is None:
        return None, {}
    if not isinstance(raw, list):
        raise _fail("'outputs' must be a list")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for out in raw:
        name = out.get("name") if isinstance(out, dict) else None
        if not isinstance(name, str) or sig.output(name) is None:
            raise _fail(f"unknown output {str(name)[:64]!r}; expected {[t.name for t in sig.outputs]}")
        if name in binary or name in names:
            raise _fail(f"output {name!r} requested twice")
        params = _tensor_params(f"output {name!r}", out)
        if "binary_data" in params:
            if not isinstance(params["binary_data"], bool):
                raise _fail(f"output {name!r}: binary_data must be a boolean")
            binary[name] = params["binary_data"]
        names.append(name)
    return names or None, binary


# the response ------------------------------------------------------------------------------------
def _json_data(meta: TensorMeta, buf: bytes) -> Any:
    arr = from_bytes(buf, meta.datatype, meta.shape).reshape(-1)
    if meta.datatype == "BYTES":
        return [b.decode("utf-8", errors="replace") for b in arr]
    return arr


def encode_response(version: ResolvedVersion, parsed: ParsedRequest, reply: InferReplyMsg) -> EncodedResponse:
    body: dict[str, Any] = {"model_name": version.model, "model_version": str(version.version)}
    if parsed.id is not None:
        body["id"] = parsed.id
    outputs: list[dict[str, Any]] = []
    tail: list[bytes] = []
    for meta, buf in zip(reply.outputs, reply.tensors, strict=True):
        out: dict[str, Any] = {"name": meta.name, "datatype": meta.datatype, "shape": list(meta.shape)}
        if parsed.binary(meta.name):
            out["parameters"] = {"binary_data_size": len(buf)}
            tail.append(buf)
        else:
            out["data"] = _json_data(meta, buf)
        outputs.append(out)
    body["outputs"] = outputs
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    tokens = reply.prompt_tokens
    if not tail:
        return EncodedResponse(header, prompt_tokens=tokens)
    return EncodedResponse(b"".join([header, *tail]), header_length=len(header), prompt_tokens=tokens)


_PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}


def model_metadata(version: ResolvedVersion, versions: list[int]) -> dict[str, Any]:
    sig = version.signature
    return {
        "name": version.model,
        "versions": [str(v) for v in versions],
        "platform": _PLATFORMS.get(version.format, version.format),
        "inputs": [t.model_dump(mode="json") for t in sig.inputs],
        "outputs": [t.model_dump(mode="json") for t in sig.outputs],
    }


def model_config(version: ResolvedVersion) -> dict[str, Any]:
    """The version's serving config in Triton's model-config JSON shape (what tools such as
    perf_analyzer read through `GET .../config`): dims exclude the batch dimension when batched."""
    sig, cfg = version.signature, version.config
    batched = sig.batched() and cfg.max_batch_size > 1

    def tensors(specs: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "data_type": f"TYPE_{'STRING' if t.datatype == 'BYTES' else t.datatype}",
                "dims": list(t.shape[1:] if batched else t.shape),
            }
            for t in specs
        ]

    return {
        "name": version.model,
        "platform": _PLATFORMS.get(version.format, version.format),
        "max_batch_size": cfg.max_batch_size if batched else 0,
        "input": tensors(sig.inputs),
        "output": tensors(sig.outputs),
        "instance_group": [
            {
                "count": cfg.instances,
                "kind": "KIND_AUTO"
                if cfg.device == "auto"
                else f"KIND_{'GPU' if cfg.device == 'cuda' else 'CPU'}",
            }
        ],
        "dynamic_batching": {
            "preferred_batch_size": list(cfg.preferred_batch_sizes),
            "max_queue_delay_microseconds": int(cfg.max_queue_delay_ms * 1000),
            "priority_levels": cfg.priority_levels,
            "default_priority_level": cfg.default_priority_level or cfg.priority_levels,
            "default_queue_policy": {
                "max_queue_size": cfg.max_queue_size,
                "default_timeout_microseconds": cfg.default_timeout_ms * 1000,
            },
        },
    }
