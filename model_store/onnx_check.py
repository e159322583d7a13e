"""ONNX safety policy: no external data anywhere, no operator outside the standard domains.

- External data: onnxruntime resolves an external-data location against its working directory
  when a model is loaded from bytes, so any tensor stored "elsewhere" reads a host file. Every
  place a tensor can live is checked: graph initializers, sparse initializers (values and
  indices), node attributes (`t`, `tensors`, `sparse_tensor`, `sparse_tensors`) at any depth,
  subgraphs (`g`, `graphs`: If, Loop, Scan) and model-local functions (bodies and attribute
  defaults). A tensor with
  `data_location == EXTERNAL` or any `external_data` entry is refused.
- Domains: only the standard ONNX domains may appear in `opset_import` and on nodes. Custom
  domains (custom-op libraries), onnxruntime's contrib domains (`com.microsoft`, its
  `org.pytorch.aten` ATen bridge, the training and preview domains) are refused. A node may
  call a model-local function by its domain and name; that function's body passes the same
  checks.
- `training_info` (graphs the runtime does not serve) is refused.

A refusal is `InvalidArtifact` naming the tensor or the op.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from model_store.errors import InvalidArtifact

# The standard operator sets. onnxruntime's contrib domain (com.microsoft) is refused: its
# kernels are a much larger and less reviewed surface, and no supported model needs it.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


def check_onnx_bytes(data: bytes) -> None:
    """Parse serialized ONNX (protobuf only, nothing is loaded or run) and check it."""
    import onnx

    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as exc:
        raise InvalidArtifact("not a valid ONNX model") from exc
    check_onnx_model(model)


def check_onnx_model(model: Any) -> None:
    if len(model.training_info):
        raise InvalidArtifact("ONNX training_info is refused (inference graphs only)")
    local = {(f.domain, f.name) for f in model.functions}
    local_domains = {domain for domain, _ in local}
    _check_graph(model.graph, local, "graph")  # nodes first: their refusal names the op
    for function in model.functions:
        where = f"function {function.domain}.{function.name}"
        _check_nodes(function.node, local, where)
        for attr in function.attribute_proto:  # default values of the function's attributes
            _check_attribute(attr, local, f"attribute default {attr.name!r} of {where}")
        _check_opsets(function.opset_import, local_domains, where)
    _check_opsets(model.opset_import, local_domains, "the model")


def _check_opsets(opsets: Iterable[Any], local_domains: set[str], where: str) -> None:
    for opset in opsets:
        if opset.domain not in STANDARD_DOMAINS and opset.domain not in local_domains:
            raise InvalidArtifact(f"ONNX operator domain {opset.domain!r} in {where} is not allowed")


def _check_graph(graph: Any, local: set[tuple[str, str]], where: str) -> None:
    for tensor in graph.initializer:
        _check_tensor(tensor, f"initializer {tensor.name!r} in {where}")
    for sparse in graph.sparse_initializer:
        _check_sparse(sparse, f"sparse initializer in {where}")
    _check_nodes(graph.node, local, where)


def _check_nodes(nodes: Iterable[Any], local: set[tuple[str, str]], where: str) -> None:
    for node in nodes:
        op = f"{node.domain or 'ai.onnx'}::{node.op_type}"
        label = f"node {node.name!r} ({op}) in {where}"
        if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in local:
            raise InvalidArtifact(f"ONNX op {op} is not allowed (node {node.name!r} in {where})")
        for attr in node.attribute:
            _check_attribute(attr, local, f"attribute {attr.name!r} of {label}")


def _check_attribute(attr: Any, local: set[tuple[str, str]], where: str) -> None:
    if attr.HasField("t"):
        _check_tensor(attr.t, f"tensor {attr.t.name!r} in {where}")
    for tensor in attr.tensors:
        _check_tensor(tensor, f"tensor {tensor.name!r} in {where}")
    if attr.HasField("sparse_tensor"):
        _check_sparse(attr.sparse_tensor, where)
    for sparse in attr.sparse_tensors:
        _check_sparse(sparse, where)
    if attr.HasField("g"):
        _check_graph(attr.g, local, f"subgraph {attr.g.name!r} of {where}")
    for graph in attr.graphs:
        _check_graph(graph, local, f"subgraph {graph.name!r} of {where}")


def _check_sparse(sparse: Any, where: str) -> None:
    _check_tensor(sparse.values, f"sparse tensor values {sparse.values.name!r} in {where}")
    _check_tensor(sparse.indices, f"sparse tensor indices {sparse.indices.name!r} in {where}")


def _check_tensor(tensor: Any, where: str) -> None:
    from onnx import TensorProto

    if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
        raise InvalidArtifact(f"ONNX external data is refused: {where}")
