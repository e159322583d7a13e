"""Test models for the serving work (protocol datatypes, faults), built by the tests."""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper

from model_store.signature import NUMPY_DTYPES

ALL_DATATYPES = tuple(NUMPY_DTYPES)  # every OIP datatype, in the signature module's order
_ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def identity_all_types_bytes() -> bytes:
    """One Identity per OIP datatype: in_<DT>: DT[-1, 3] -> out_<DT>: DT[-1, 3]."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [f"in_{dt}"], [f"out_{dt}"]) for dt in ALL_DATATYPES],
        "identity_all",
        [helper.make_tensor_value_info(f"in_{dt}", _ONNX_TYPES[dt], ["n", 3]) for dt in ALL_DATATYPES],
        [helper.make_tensor_value_info(f"out_{dt}", _ONNX_TYPES[dt], ["n", 3]) for dt in ALL_DATATYPES],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def all_types_sample(rows: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Values that exercise each datatype's range (extremes, negatives, non-ASCII text)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for dt in ALL_DATATYPES:
        if dt == "BOOL":
            arr = rng.integers(0, 2, size=(rows, 3)).astype(np.bool_)
        elif dt == "BYTES":
            words = ["", "héllo", "naïve ☃", "a b", "x" * 40, "日本"]
            arr = np.array(
                [[words[(r * 3 + c + seed) % len(words)].encode() for c in range(3)] for r in range(rows)],
                dtype=np.object_,
            )
        elif dt.startswith("FP"):
            dtype = np.dtype({"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[dt])
            arr = (rng.standard_normal((rows, 3)) * 100).astype(dtype)
        else:
            dtype = np.dtype(dt.lower())
            info = np.iinfo(dtype)
            arr = rng.integers(info.min, info.max, size=(rows, 3), dtype=dtype, endpoint=True)
            arr.flat[0], arr.flat[1] = info.min, info.max
        out[dt] = arr
    return out


class Wide(torch.nn.Module):
    """y = x @ W with a large W (FP32[-1, 2048] -> FP32[-1, 2048], 16 MiB of weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(2048, 2048) / 50)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


WIDE_SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2048]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2048]}],
}
