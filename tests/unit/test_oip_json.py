from __future__ import annotations

import numpy as np
import orjson
import pytest

from model_store.signature import Signature
from service.errors import InvalidInput, PayloadTooLarge
from service.inference.oip import parse_infer_request
from workers.contract.tensors import from_bytes

SIG = Signature.model_validate(
    {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "ids", "datatype": "INT8", "shape": [-1]},
            {"name": "text", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }
)


def body(**over: object) -> bytes:
    doc: dict[str, object] = {
        "id": "abc",
        "inputs": [
            {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2, 3, 4], [5, 6, 7, 8]]},
            {"name": "ids", "shape": [2], "datatype": "INT8", "data": [1, -2]},
            {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hi", "there"]},
        ],
        "outputs": [{"name": "y"}],
    }
    doc.update(over)
    return orjson.dumps(doc)


def test_valid_request_is_ordered_and_encoded() -> None:
    req = parse_infer_request(body(), SIG, 1000)
    assert req.id == "abc" and req.outputs == ["y"]
    assert [m.name for m in req.inputs] == ["x", "ids", "text"]
    x = from_bytes(req.tensors[0], "FP32", (2, 4))
    np.testing.assert_array_equal(x, np.arange(1, 9, dtype=np.float32).reshape(2, 4))
    assert list(from_bytes(req.tensors[2], "BYTES", (2,))) == [b"hi", b"there"]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"name": "x", "shape": [2, 5], "datatype": "FP32", "data": [0] * 10}, "'x'"),
        ({"name": "x", "shape": [2, 4], "datatype": "FP64", "data": [0] * 8}, "datatype"),
        ({"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0] * 7}, "elements"),
        ({"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[0, 1], [2]]}, "ragged"),
        ({"name": "x", "shape": [2, -4], "datatype": "FP32", "data": []}, "non-negative"),
        ({"name": "x", "shape": [2, 4], "datatype": "FP32", "data": "nope"}, "list"),
        ({"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [True] * 8}, "FP32"),
        ({"name": "ids", "shape": [2], "datatype": "INT8", "data": [1, 300]}, "fit"),
        ({"name": "ids", "shape": [2], "datatype": "INT8", "data": [1.5, 2]}, "INT8"),
    ],
)
def test_bad_inputs_name_the_input(change: dict[str, object], fragment: str) -> None:
    doc = orjson.loads(body())
    doc["inputs"] = [change if i["name"] == change["name"] else i for i in doc["inputs"]]
    with pytest.raises(InvalidInput) as exc:
        parse_infer_request(orjson.dumps(doc), SIG, 1000)
    assert fragment in exc.value.message


def test_missing_unknown_and_duplicate_inputs() -> None:
    doc = orjson.loads(body())
    with pytest.raises(InvalidInput, match="missing input"):
        parse_infer_request(orjson.dumps({"inputs": doc["inputs"][:2]}), SIG, 1000)
    with pytest.raises(InvalidInput, match="given twice"):
        parse_infer_request(orjson.dumps({"inputs": doc["inputs"] + doc["inputs"][:1]}), SIG, 1000)
    with pytest.raises(InvalidInput, match="unknown output"):
        parse_infer_request(body(outputs=[{"name": "zz"}]), SIG, 1000)


def test_limits_and_garbage() -> None:
    with pytest.raises(PayloadTooLarge):
        parse_infer_request(body(), SIG, 4)
    for raw in (b"", b"[]", b"{", b"[" * 2000 + b"]" * 2000, b'{"inputs": 3}'):
        with pytest.raises(InvalidInput):
            parse_infer_request(raw, SIG, 1000)
