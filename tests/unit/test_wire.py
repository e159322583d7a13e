from __future__ import annotations

import numpy as np
import pytest

from model_store.signature import NUMPY_DTYPES
from workers.contract.messages import ContractError, InferReplyMsg, InferRequestMsg, TensorMeta
from workers.contract.tensors import TensorDecodeError, from_bytes, to_bytes


@pytest.mark.parametrize("datatype", [d for d in NUMPY_DTYPES if d != "BYTES"])
def test_numeric_tensor_roundtrip(datatype: str) -> None:
    arr = (np.arange(6) % 2).astype(NUMPY_DTYPES[datatype]).reshape(2, 3)
    back = from_bytes(to_bytes(arr, datatype), datatype, (2, 3))
    np.testing.assert_array_equal(back, arr)


def test_bytes_tensor_roundtrip_and_truncation() -> None:
    arr = np.array([b"a", b"", "h\u00e9llo".encode()], dtype=object)
    buf = to_bytes(arr, "BYTES")
    assert buf[:4] == b"\x01\x00\x00\x00"
    assert list(from_bytes(buf, "BYTES", (3,))) == list(arr)
    with pytest.raises(TensorDecodeError):
        from_bytes(buf[:-1], "BYTES", (3,))
    with pytest.raises(TensorDecodeError):
        from_bytes(buf + b"x", "BYTES", (3,))


def test_numeric_size_mismatch() -> None:
    with pytest.raises(TensorDecodeError):
        from_bytes(b"\0" * 7, "FP32", (2,))


def test_request_and_reply_roundtrip() -> None:
    msg = InferRequestMsg(
        request_id="r1",
        reply_to="kiln:reply:g",
        deadline_ms=10,
        enqueued_ms=5,
        tenant_id=3,
        inputs=[TensorMeta("x", "FP32", (1, 2))],
        tensors=[b"\0" * 8],
        outputs=["y"],
        priority=1,
        parameters={"a": 1},
    )
    back = InferRequestMsg.from_fields(msg.to_fields())
    assert back == msg
    reply = InferReplyMsg(
        request_id="r1",
        ok=True,
        outputs=[TensorMeta("y", "FP32", (1,))],
        tensors=[b"\0" * 4],
        compute_us=7,
        batch_size=3,
        worker="w",
    )
    assert InferReplyMsg.from_fields(reply.to_fields()) == reply
    fail = InferReplyMsg.failure("r2", "invalid_input", "nope")
    assert InferReplyMsg.from_fields(fail.to_fields()) == fail


def test_unknown_contract_version_and_garbage_are_refused() -> None:
    fields = InferRequestMsg("r", "s", 1, 1, 1, [], []).to_fields()
    with pytest.raises(ContractError):
        InferRequestMsg.from_fields({**fields, b"v": b"2"})
    with pytest.raises(ContractError):
        InferRequestMsg.from_fields({b"v": b"1", b"h": b"{}"})
    assert InferRequestMsg.peek_id({b"h": b"not json"}) is None
