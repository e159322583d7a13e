from __future__ import annotations

from pathlib import Path

import pytest

from model_store.blobs import BlobStore
from model_store.errors import IntegrityFailure, InvalidArtifact, InvalidName, NotFound
from model_store.formats import validate
from model_store.names import check_alias, check_model_name, parse_version_ref
from model_store.signature import Signature
from tests.models import (
    SCALE_SIGNATURE,
    Scale,
    demo_onnx_bytes,
    malicious_pickle,
    onnx_add_bytes,
    onnx_with_external_data,
    torch_save_checkpoint,
    torchscript_bytes,
)


@pytest.mark.parametrize("bad", ["", "..", "a..b", "a/b", "A", "-a", ".a", "a" * 64, "a b", "%2e"])
def test_model_name_rule(bad: str) -> None:
    with pytest.raises(InvalidName):
        check_model_name(bad)


def test_good_names_and_refs() -> None:
    assert check_model_name("resnet-50.v2_x") == "resnet-50.v2_x"
    assert check_alias("production") == "production"
    assert parse_version_ref("12") == 12
    assert parse_version_ref("staging") == "staging"
    for bad in ("0", "01", "-1", "1.0", "../1", "9" * 12):
        with pytest.raises(InvalidName):
            parse_version_ref(bad)


def _file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "artifact"
    p.write_bytes(data)
    return p


def test_onnx_signature_is_read_from_the_graph(tmp_path: Path) -> None:
    sig = validate("onnx", _file(tmp_path, onnx_add_bytes()), None)
    assert [(t.name, t.datatype, t.shape) for t in sig.inputs] == [
        ("x", "FP32", (-1, 3)),
        ("y", "FP32", (-1, 3)),
    ]
    assert sig.batched()


def test_onnx_given_signature_must_match_graph(tmp_path: Path) -> None:
    wrong = Signature.model_validate(
        {
            "inputs": [{"name": "q", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
        }
    )
    with pytest.raises(InvalidArtifact):
        validate("onnx", _file(tmp_path, demo_onnx_bytes()), wrong)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "weights.bin"])
def test_onnx_external_data_is_refused_without_reading(tmp_path: Path, location: str) -> None:
    with pytest.raises(InvalidArtifact, match="external data"):
        validate("onnx", _file(tmp_path, onnx_with_external_data(location)), None)


def test_pickles_and_checkpoints_are_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    sig = Signature.model_validate(SCALE_SIGNATURE)
    for fmt in ("torchscript", "onnx"):
        with pytest.raises(InvalidArtifact):
            validate(fmt, _file(tmp_path, malicious_pickle(marker)), sig)
    with pytest.raises(InvalidArtifact, match="TorchScript"):
        validate("torchscript", _file(tmp_path, torch_save_checkpoint()), sig)
    with pytest.raises(InvalidArtifact):
        validate("torchscript", _file(tmp_path, b"PK\x03\x04garbage"), sig)
    assert not marker.exists()


def test_torchscript_is_smoke_run_against_its_signature(tmp_path: Path) -> None:
    sig = Signature.model_validate(SCALE_SIGNATURE)
    assert validate("torchscript", _file(tmp_path, torchscript_bytes(Scale())), sig) == sig
    wrong_out = Signature.model_validate(
        {**SCALE_SIGNATURE, "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 5]}]}
    )
    with pytest.raises(InvalidArtifact, match="output"):
        validate("torchscript", _file(tmp_path, torchscript_bytes(Scale())), wrong_out)


def test_blob_store_is_content_addressed_and_verified(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    sha, size = store.put_bytes(b"hello")
    assert size == 5 and store.read_verified(sha) == b"hello"
    assert store.put_bytes(b"hello")[0] == sha  # dedup
    path = store.path_for(sha)
    path.chmod(0o644)
    path.write_bytes(b"HELLO")
    with pytest.raises(IntegrityFailure):
        store.read_verified(sha)
    for bad in ("../../etc/passwd", "ab", "z" * 64):
        with pytest.raises(NotFound):
            store.path_for(bad)
