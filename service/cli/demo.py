"""The demo model that `make run` registers: a small ONNX graph built here (no download).

y = tanh(x @ W + b), x: FP32[-1, 4], y: FP32[-1, 3], fixed weights.
"""

from __future__ import annotations

import numpy as np

DEMO_MODEL = "demo"
DEMO_INPUT = [[1.0, 2.0, 3.0, 4.0]]


def demo_weights() -> tuple[np.ndarray, np.ndarray]:
    w = (np.arange(12, dtype=np.float32).reshape(4, 3) - 6.0) / 10.0
    b = np.array([0.1, -0.2, 0.3], dtype=np.float32)
    return w, b


def demo_onnx_bytes() -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = demo_weights()
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["z"]),
            helper.make_node("Tanh", ["z"], ["y"]),
        ],
        "demo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def demo_reference(x: np.ndarray) -> np.ndarray:
    w, b = demo_weights()
    return np.tanh(x.astype(np.float32) @ w + b)
