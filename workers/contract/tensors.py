"""Raw tensor bytes as the Open Inference Protocol's binary extension defines them.

Numeric tensors: row-major little-endian element bytes. BYTES tensors: each element is a
4-byte little-endian length followed by that many bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from model_store.signature import NUMPY_DTYPES


class TensorDecodeError(ValueError):
    pass


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def to_bytes(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in arr.reshape(-1):
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()


def from_bytes(buf: bytes | memoryview, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = element_count(shape)
    if datatype == "BYTES":
        return _bytes_tensor(buf, count).reshape(shape)
    dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
    if len(buf) != count * dtype.itemsize:
        raise TensorDecodeError(
            f"expected {count * dtype.itemsize} bytes for {datatype}{list(shape)}, got {len(buf)}"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _bytes_tensor(buf: bytes | memoryview, count: int) -> np.ndarray:
    view = memoryview(buf)
    if count * 4 > len(view):  # every element has a 4-byte prefix: refuse before allocating
        raise TensorDecodeError(f"{len(view)} bytes cannot hold {count} BYTES elements")
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise TensorDecodeError("BYTES tensor is truncated")
        (n,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if pos + n > len(view):
            raise TensorDecodeError("BYTES tensor is truncated")
        out[i] = bytes(view[pos : pos + n])
        pos += n
    if pos != len(view):
        raise TensorDecodeError("BYTES tensor has trailing bytes")
    return out
