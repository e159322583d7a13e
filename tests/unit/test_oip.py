"""The OIP codec alone: binary framing, requested outputs, body decoding, error cases."""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import orjson
import pytest

from model_store.registry import ResolvedVersion
from model_store.signature import Signature, VersionConfig
from service.errors import InvalidInput, PayloadTooLarge
from service.inference.oip import decode_body, encode_response, header_length, parse_infer_request
from workers.contract.messages import InferReplyMsg, TensorMeta

SIG = Signature.model_validate(
    {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "s", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "t", "datatype": "BYTES", "shape": [-1]},
        ],
    }
)


def _binary_body(header: dict, *chunks: bytes) -> tuple[bytes, int]:
    head = orjson.dumps(header)
    return head + b"".join(chunks), len(head)


def _bytes_tensor(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def test_binary_and_json_inputs_mix() -> None:
    x = np.array([[1, 2]], dtype=np.float32)
    body, n = _binary_body(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
                {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["hi"]},
            ]
        },
        x.tobytes(),
    )
    parsed = parse_infer_request(body, SIG, 1000, n)
    assert parsed.tensors == [x.tobytes(), _bytes_tensor(b"hi")]


@pytest.mark.parametrize("case", ["short", "trailing", "wrong_size", "both", "bad_bytes"])
def test_binary_framing_errors(case: str) -> None:
    x = np.zeros((1, 2), dtype=np.float32).tobytes()
    s = _bytes_tensor(b"ab")
    sizes = {
        "short": (8, len(s) + 5),
        "trailing": (8, len(s)),
        "wrong_size": (4, len(s) + 4),
        "both": (8, len(s)),
        "bad_bytes": (8, len(s)),
    }[case]
    tail = x + s + (b"zz" if case == "trailing" else b"")
    if case == "bad_bytes":
        tail = x + struct.pack("<I", 99) + b"ab"
    xin = {"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": sizes[0]}}
    if case == "both":
        xin["data"] = [1, 2]
    body, n = _binary_body(
        {
            "inputs": [
                xin,
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": sizes[1]},
                },
            ]
        },
        tail,
    )
    with pytest.raises(InvalidInput):
        parse_infer_request(body, SIG, 1000, n)


def test_header_length_and_encoding() -> None:
    assert header_length(None, 10) is None and header_length("4", 10) == 4
    for bad in ("0", "11", "-1", "x"):
        with pytest.raises(InvalidInput):
            header_length(bad, 10)
    raw = b'{"a": 1}' * 100
    assert decode_body(gzip.compress(raw), "gzip", 10_000) == raw
    assert decode_body(zlib.compress(raw), "deflate", 10_000) == raw
    with pytest.raises(PayloadTooLarge):
        decode_body(gzip.compress(b"\0" * 100_000), "gzip", 1000)
    with pytest.raises(InvalidInput):
        decode_body(b"nope", "br", 1000)
    with pytest.raises(InvalidInput):
        decode_body(b"nope", "gzip", 1000)


def test_requested_outputs_binary_and_order() -> None:
    body = orjson.dumps(
        {
            "id": "q",
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
                {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["a"]},
            ],
            "outputs": [{"name": "t", "parameters": {"binary_data": True}}, {"name": "y"}],
        }
    )
    parsed = parse_infer_request(body, SIG, 1000)
    assert parsed.outputs == ["t", "y"] and parsed.binary("t") and not parsed.binary("y")
    version = ResolvedVersion(1, 1, "m", 3, "onnx", "0" * 64, SIG, VersionConfig())
    t = _bytes_tensor(b"zz")
    y = np.array([[5, 6]], dtype=np.float32).tobytes()
    reply = InferReplyMsg(
        "r", True, [TensorMeta("t", "BYTES", (1,)), TensorMeta("y", "FP32", (1, 2))], [t, y]
    )
    out = encode_response(version, parsed, reply)
    assert out.header_length is not None and out.body[out.header_length :] == t
    head = orjson.loads(out.body[: out.header_length])
    assert head["id"] == "q" and head["model_version"] == "3"
    assert head["outputs"][0] == {
        "name": "t",
        "datatype": "BYTES",
        "shape": [1],
        "parameters": {"binary_data_size": len(t)},
    }
    assert head["outputs"][1]["data"] == [5.0, 6.0]


@pytest.mark.parametrize(
    "outputs",
    [
        [{"name": "y", "parameters": {"classification": 2}}],
        [{"name": "y"}, {"name": "y"}],
        [{"name": "y", "parameters": {"binary_data": "yes"}}],
        [{"name": "nope"}],
    ],
)
def test_bad_requested_outputs(outputs: list) -> None:
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
                {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["a"]},
            ],
            "outputs": outputs,
        }
    )
    with pytest.raises(InvalidInput):
        parse_infer_request(body, SIG, 1000)


def test_uint64_extremes_in_json() -> None:
    sig = Signature.model_validate(
        {
            "inputs": [{"name": "u", "datatype": "UINT64", "shape": [3]}],
            "outputs": [{"name": "v", "datatype": "UINT64", "shape": [3]}],
        }
    )
    body = orjson.dumps(
        {"inputs": [{"name": "u", "datatype": "UINT64", "shape": [3], "data": [0, 2**63, 2**64 - 1]}]}
    )
    parsed = parse_infer_request(body, sig, 10)
    assert np.frombuffer(parsed.tensors[0], "<u8").tolist() == [0, 2**63, 2**64 - 1]
    body = orjson.dumps(
        {"inputs": [{"name": "u", "datatype": "UINT64", "shape": [3], "data": [0.5, 2**63, 2**64 - 1]}]}
    )
    with pytest.raises(InvalidInput):
        parse_infer_request(body, sig, 10)
