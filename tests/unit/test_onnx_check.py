"""The ONNX policy: external data refused wherever a tensor can live, custom domains refused,
model-local functions allowed only with clean bodies; the worker's load path refuses too."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_store.errors import InvalidArtifact
from model_store.formats import validate
from model_store.onnx_check import check_onnx_bytes
from model_store.registry import ResolvedVersion
from model_store.signature import Signature, VersionConfig
from tests.malicious_models import (
    _external,
    clean_function_body,
    hostile_onnx,
    onnx_local_function,
)
from tests.models import demo_onnx_bytes, onnx_add_bytes
from tests.serving_models import identity_all_types_bytes
from workers.contract.errors import LoadError
from workers.inference.runners import load_local_runner as load_runner

HOSTILE = hostile_onnx("secret.bin")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_models_are_refused_naming_the_place(case: str) -> None:
    data, named = HOSTILE[case]
    with pytest.raises(InvalidArtifact, match=re.escape(named)):
        check_onnx_bytes(data)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_upload_validation_refuses(case: str, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(HOSTILE[case][0])
    with pytest.raises(InvalidArtifact, match=re.escape(HOSTILE[case][1])):
        validate("onnx", path, None)


def test_our_models_and_a_clean_local_function_pass(tmp_path: Path) -> None:
    for data in (demo_onnx_bytes(), onnx_add_bytes(), identity_all_types_bytes()):
        check_onnx_bytes(data)
    path = tmp_path / "f.onnx"
    path.write_bytes(onnx_local_function(clean_function_body()))
    sig = validate("onnx", path, None)
    assert [t.name for t in sig.inputs] == ["x"]


def _with_node_attribute(attr: onnx.AttributeProto) -> bytes:
    node = helper.make_node("Identity", ["x"], ["y"])
    node.attribute.append(attr)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def _hidden(name: str) -> TensorProto:
    return _external(numpy_helper.from_array(np.ones(3, dtype=np.float32), name), "../../etc/passwd")


def test_every_attribute_kind_is_checked() -> None:
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(1, dtype=np.float32), "v"), _hidden("idx"), [3]
    )
    inner = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=_hidden("deep"))],
        "inner",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [3])],
    )
    cases = {
        "tensors": helper.make_attribute("ts", [_hidden("in_list")]),
        "sparse_tensor": helper.make_attribute("st", sparse),
        "sparse_tensors": helper.make_attribute("sts", [sparse]),
        "graphs": helper.make_attribute("branches", [inner]),
    }
    for kind, attr in cases.items():
        with pytest.raises(InvalidArtifact, match="external data"):
            check_onnx_bytes(_with_node_attribute(attr))
        assert kind


def test_function_attribute_default_is_checked() -> None:
    model = onnx.ModelProto.FromString(onnx_local_function(clean_function_body()))
    model.functions[0].attribute_proto.append(helper.make_attribute("k", _hidden("default")))
    with pytest.raises(InvalidArtifact, match=re.escape("attribute default 'k' of function local.f")):
        check_onnx_bytes(model.SerializeToString())


def test_external_marker_without_location_and_other_domains() -> None:
    t = numpy_helper.from_array(np.ones(3, dtype=np.float32), "W")
    t.external_data.add().key = "offset"  # entries without the EXTERNAL flag count too
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [t],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InvalidArtifact, match="initializer 'W'"):
        check_onnx_bytes(model.SerializeToString())
    for domain in ("com.microsoft", "org.pytorch.aten", "ai.onnx.preview.training"):
        node = helper.make_node("FusedMatMul", ["x", "x"], ["y"], domain=domain)
        graph = helper.make_graph([node], "g", graph.input, graph.output)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        with pytest.raises(InvalidArtifact, match=re.escape(f"{domain}::FusedMatMul")):
            check_onnx_bytes(model.SerializeToString())
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.graph.node[0].domain = ""
    with pytest.raises(InvalidArtifact, match=re.escape("domain 'com.microsoft'")):
        check_onnx_bytes(model.SerializeToString())


def test_worker_load_path_refuses_sparse_external(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime resolves the relative location against the cwd: plant the file there and
    show the runner refuses before onnxruntime sees the bytes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(b"AAAABBBBCCCC")
    sig = Signature.model_validate(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
        }
    )
    version = ResolvedVersion(1, 1, "m", 1, "onnx", "0" * 64, sig, VersionConfig())
    with pytest.raises(LoadError, match="S_values"):
        load_runner(version, HOSTILE["sparse_external"][0])
    runner = load_runner(version, demo_onnx_bytes())  # a clean model still loads
    assert runner.device == "cpu"
