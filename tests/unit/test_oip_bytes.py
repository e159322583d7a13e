"""BYTES tensors: strings only in JSON, element count and total size bounded in JSON and in the
binary extension, refused before anything is allocated."""

from __future__ import annotations

import struct

import orjson
import pytest

from model_store.signature import Signature
from service.errors import InvalidInput, PayloadTooLarge
from service.inference.oip import parse_infer_request
from service.inference.oip_bytes import BytesLimits
from workers.contract.tensors import TensorDecodeError, from_bytes

SIG = Signature.model_validate(
    {
        "inputs": [{"name": "s", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "t", "datatype": "BYTES", "shape": [-1]}],
    }
)
SIG2D = Signature.model_validate(
    {
        "inputs": [{"name": "s", "datatype": "BYTES", "shape": [-1, 2]}],
        "outputs": [{"name": "t", "datatype": "BYTES", "shape": [-1]}],
    }
)
MAX = 1 << 26


def _json(data: object, shape: list[int]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": shape, "data": data}]})


def _binary(tail: bytes, count: int) -> tuple[bytes, int]:
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [count],
                    "parameters": {"binary_data_size": len(tail)},
                }
            ]
        }
    )
    return head + tail, len(head)


@pytest.mark.parametrize("data", [[{}, 64], [None, 5], [{}, -1], [{}, 300_000_000], [1, 2], [True, "a"]])
def test_json_bytes_accept_only_strings(data: list[object]) -> None:
    with pytest.raises(InvalidInput, match="input 's': BYTES data must be strings"):
        parse_infer_request(_json(data, [2]), SIG, MAX)


def test_json_bytes_strings_flat_and_nested() -> None:
    flat = parse_infer_request(_json(["ab", "", "é"], [3]), SIG, MAX)
    assert list(from_bytes(flat.tensors[0], "BYTES", (3,))) == [b"ab", b"", "é".encode()]
    nested = parse_infer_request(_json([["a", "b"], ["c", "d"]], [2, 2]), SIG2D, MAX)
    assert list(from_bytes(nested.tensors[0], "BYTES", (4,))) == [b"a", b"b", b"c", b"d"]
    with pytest.raises(InvalidInput, match="3 strings given for 4 elements"):
        parse_infer_request(_json([["a", "b"], ["c"]], [2, 2]), SIG2D, MAX)
    with pytest.raises(InvalidInput, match="got dict"):
        parse_infer_request(_json([["a", "b"], ["c", {}]], [2, 2]), SIG2D, MAX)


def test_json_bytes_count_and_size_bounds() -> None:
    limits = BytesLimits(max_elements=4, max_total=10)
    with pytest.raises(PayloadTooLarge, match="more than 4 BYTES elements"):
        parse_infer_request(_json(["a"] * 5, [5]), SIG, MAX, bytes_limits=limits)
    # refused by its shape before its data is looked at (the data is not even a list)
    with pytest.raises(PayloadTooLarge, match="more than 4 BYTES elements"):
        parse_infer_request(_json(None, [10_000_000]), SIG, MAX, bytes_limits=limits)
    with pytest.raises(PayloadTooLarge, match="over 10 bytes"):
        parse_infer_request(_json(["aaaaaa", "bbbbbb"], [2]), SIG, MAX, bytes_limits=limits)
    ok = parse_infer_request(_json(["aaaaa", "bbbbb"], [2]), SIG, MAX, bytes_limits=limits)
    assert len(ok.tensors[0]) == 18


def test_binary_bytes_count_bounded_before_walking() -> None:
    # 10 M empty strings: 40 MB of zero length prefixes; refused by the count alone
    body, n = _binary(b"\0\0\0\0" * 1000, 10_000_000)
    with pytest.raises(PayloadTooLarge, match="BYTES elements"):
        parse_infer_request(body, SIG, MAX, n)
    # within the count bound but the buffer cannot hold that many prefixes: refused before allocating
    body, n = _binary(b"\0\0\0\0" * 10, 1000)
    with pytest.raises(InvalidInput, match="cannot hold 1000 BYTES elements"):
        parse_infer_request(body, SIG, MAX, n)


@pytest.mark.parametrize(
    ("tail", "count", "error"),
    [
        (struct.pack("<I", 0xFFFFFFFF) + b"ab", 1, "runs past the end"),
        (struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1), 2, "runs past the end"),
        (struct.pack("<I", 1) + b"abc", 1, "trailing"),
        (struct.pack("<I", 8) + b"a" * 8 + struct.pack("<I", 0) * 2, 3, None),
    ],
)
def test_binary_bytes_length_prefixes_checked(tail: bytes, count: int, error: str | None) -> None:
    body, n = _binary(tail, count)
    if error is None:
        assert parse_infer_request(body, SIG, MAX, n).tensors[0] == tail
        with pytest.raises(PayloadTooLarge):
            parse_infer_request(body, SIG, MAX, n, bytes_limits=BytesLimits(max_total=7))
        return
    with pytest.raises(InvalidInput, match=error):
        parse_infer_request(body, SIG, MAX, n)


def test_worker_side_decoder_refuses_a_count_the_buffer_cannot_hold() -> None:
    with pytest.raises(TensorDecodeError, match="cannot hold"):
        from_bytes(b"\0" * 8, "BYTES", (1 << 30,))
