"""Tiny models the tests build themselves (no downloads)."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from service.cli.demo import demo_onnx_bytes, demo_reference

__all__ = ["demo_onnx_bytes", "demo_reference"]


def onnx_add_bytes() -> bytes:
    """z = x + y on FP32[-1, 3] (a second ONNX model with two inputs)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["z"])],
        "add",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def onnx_with_external_data(location: str) -> bytes:
    w = numpy_helper.from_array(np.ones((3, 3), dtype=np.float32), "W")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    w.ClearField("raw_data")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


class Scale(torch.nn.Module):
    """y = x @ W * 2 + 1 on FP32[-1, 4] -> FP32[-1, 2]."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.arange(8, dtype=torch.float32).reshape(4, 2) / 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w * 2 + 1


class FailsOnNegative(torch.nn.Module):
    """Raises when any input row sums below zero: one bad item poisons a whole batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.sum(dim=1) < 0).any()):
            raise RuntimeError("negative row")
        return x * 3


def torchscript_bytes(module: torch.nn.Module) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
    return buf.getvalue()


def scale_reference(x: np.ndarray) -> np.ndarray:
    w = np.arange(8, dtype=np.float32).reshape(4, 2) / 10
    return x.astype(np.float32) @ w * 2 + 1


SCALE_SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
}
TIMES3_SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
}


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (f"touch {self.marker}",))


def malicious_pickle(marker: Path) -> bytes:
    """A pickle whose loading would create `marker` (it must never be loaded)."""
    return pickle.dumps(_Exploit(marker))


def torch_save_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    return buf.getvalue()
