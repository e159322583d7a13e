"""Hostile models the safety tests build themselves: TorchScript that reaches files or custom
code, ONNX that hides external data or custom ops. Each names what a refusal must name."""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.models import torchscript_bytes

# FP32[-1, 2] -> FP32[-1, 2], the signature every TorchScript model here is uploaded with.
PAIR_SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
}


class FromFileForward(torch.nn.Module):
    """Inference returns bytes of a host file (issue 10 item 3)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leaked = torch.from_file(self.path, False, 2, dtype=torch.uint8)
        return x + leaked.float()


class FromFileAtLoad(torch.nn.Module):
    """Reads a host file in __setstate__, which runs while the archive is loaded."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.register_buffer("w", torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str]:
        return (self.w, self.path)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str]) -> None:
        self.path = state[1]
        self.w = state[0] + torch.from_file(self.path, False, 2, dtype=torch.uint8).float()
        self.training = False


class _Reader(torch.nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def peek(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.from_file(self.path, False, 2, dtype=torch.uint8).float()


class FromFileInSubmodule(torch.nn.Module):
    """forward is clean; a submodule's other exported method reads a file."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.inner = _Reader(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 2


class SavesTensor(torch.nn.Module):
    """torch.save inside the script writes a host file on every call."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.path)
        return x * 2


CUSTOM_OP = "kilntest::echo"


def _register_custom_op() -> None:
    """A custom op in a non-aten namespace (stands for any loaded custom-op library)."""
    if hasattr(torch.ops.kilntest, "echo"):
        return
    lib = torch.library.Library("kilntest", "DEF")  # kept alive in _LIBS
    lib.define("echo(Tensor x) -> Tensor")
    lib.impl("echo", lambda x: x.clone(), "CompositeExplicitAutograd")
    _LIBS.append(lib)


_LIBS: list[torch.library.Library] = []


class CallsCustomOp(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.kilntest.echo(x)


def custom_op_module() -> torch.nn.Module:
    _register_custom_op()
    return CallsCustomOp()


def hostile_torchscript(path: str) -> dict[str, tuple[bytes, str]]:
    """name -> (archive, the op its refusal must name)."""
    return {
        "forward": (torchscript_bytes(FromFileForward(path)), "aten::from_file"),
        "setstate": (torchscript_bytes(FromFileAtLoad(path)), "aten::from_file"),
        "submodule": (torchscript_bytes(FromFileInSubmodule(path)), "aten::from_file"),
        "save": (torchscript_bytes(SavesTensor(path)), "aten::save"),
        "custom_op": (torchscript_bytes(custom_op_module()), CUSTOM_OP),
    }


# --- ONNX ---------------------------------------------------------------------------------


def _external(tensor: TensorProto, location: str) -> TensorProto:
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    tensor.ClearField("raw_data")
    return tensor


def _model(nodes: list, initializers: list | None = None, **extra: object) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        initializers or [],
    )
    sparse = extra.pop("sparse_initializer", None)
    if sparse is not None:
        graph.sparse_initializer.append(sparse)
    opsets = [helper.make_opsetid("", 17), *extra.pop("opsets", [])]
    model = helper.make_model(graph, opset_imports=opsets, **extra)
    model.ir_version = 8
    return bytes(model.SerializeToString())


def onnx_sparse_external(location: str) -> bytes:
    """y = x + S, S a sparse initializer whose values are external data at `location`."""
    values = _external(numpy_helper.from_array(np.ones(3, dtype=np.float32), "S_values"), location)
    indices = numpy_helper.from_array(np.arange(3, dtype=np.int64), "S_indices")
    sparse = helper.make_sparse_tensor(values, indices, [3])
    return _model([helper.make_node("Add", ["x", "S_values"], ["y"])], sparse_initializer=sparse)


def onnx_if_constant_external(location: str) -> bytes:
    """y = x + c, c a Constant (external data) inside the then-branch of an If."""
    hidden = _external(numpy_helper.from_array(np.ones(3, dtype=np.float32), "c"), location)
    out = helper.make_tensor_value_info("c_out", TensorProto.FLOAT, [3])
    then = helper.make_graph([helper.make_node("Constant", [], ["c_out"], value=hidden)], "then", [], [out])
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["c_out"], value=numpy_helper.from_array(np.zeros(3, np.float32)))],
        "else",
        [],
        [out],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [
        helper.make_node("If", ["cond"], ["c"], then_branch=then, else_branch=other),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ]
    return _model(nodes, [cond])


def onnx_custom_domain() -> bytes:
    return _model(
        [helper.make_node("ReadFile", ["x"], ["y"], domain="kiln.evil")],
        opsets=[helper.make_opsetid("kiln.evil", 1)],
    )


def onnx_local_function(body: list) -> bytes:
    """y = local.f(x), a model-local function with the given body (x -> y)."""
    domains = sorted({n.domain for n in body} - {""})
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
    function = helper.make_function("local", "f", ["x"], ["y"], body, opsets)
    return _model(
        [helper.make_node("f", ["x"], ["y"], domain="local")],
        opsets=[helper.make_opsetid("local", 1)],
        functions=[function],
    )


def clean_function_body() -> list:
    return [helper.make_node("Neg", ["x"], ["y"])]


def custom_op_function_body() -> list:
    return [helper.make_node("ReadFile", ["x"], ["y"], domain="kiln.evil")]


def external_function_body(location: str) -> list:
    hidden = _external(numpy_helper.from_array(np.ones(3, dtype=np.float32), "k"), location)
    return [helper.make_node("Constant", [], ["k"], value=hidden), helper.make_node("Add", ["x", "k"], ["y"])]


def hostile_onnx(location: str) -> dict[str, tuple[bytes, str]]:
    """name -> (model, what its refusal must name)."""
    return {
        "sparse_external": (onnx_sparse_external(location), "sparse tensor values 'S_values'"),
        "if_constant_external": (onnx_if_constant_external(location), "subgraph 'then'"),
        "custom_domain": (onnx_custom_domain(), "kiln.evil::ReadFile"),
        "function_custom_op": (onnx_local_function(custom_op_function_body()), "kiln.evil::ReadFile"),
        "function_external": (onnx_local_function(external_function_body(location)), "function local.f"),
    }
