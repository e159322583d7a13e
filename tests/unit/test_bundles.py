"""Bundles of directory-shaped formats: every member checked, nothing unsafe accepted."""

from __future__ import annotations

import io
import json
import pickle
import struct
import tarfile
import zipfile

import pytest

from model_store.bundles import read_bundle
from model_store.errors import InvalidArtifact
from model_store.hf_encoder import check_safetensors_header
from model_store.hf_encoder import open_bundle as _open_bundle
from model_store.limits import ArtifactLimits


def _read(data: bytes, budget: int = 1 << 20) -> dict[str, bytes]:
    return read_bundle(io.BytesIO(data), ArtifactLimits(max_unpacked_bytes=budget)).files


def open_bundle(data: bytes):  # type: ignore[no-untyped-def]
    return _open_bundle(io.BytesIO(data), ArtifactLimits())


def _tar(members: dict[str, bytes], link: tuple[str, str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link is not None:
            info = tarfile.TarInfo(link[0])
            info.type = link[2]
            info.linkname = link[1]
            tar.addfile(info)
    return buf.getvalue()


def _safetensors() -> bytes:
    shape = [10, 8]
    header = json.dumps(
        {"embeddings.word_embeddings.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, 320]}}
    ).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 320


CONFIG = {
    "model_type": "bert",
    "vocab_size": 10,
    "hidden_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "max_position_embeddings": 16,
}


def _encoder_files(**override: bytes) -> dict[str, bytes]:
    files = {
        "config.json": json.dumps(CONFIG).encode(),
        "model.safetensors": _safetensors(),
        "tokenizer.json": b"{}",
    }
    files.update(override)
    return files


def test_plain_members_are_read() -> None:
    files = _read(_tar({"./config.json": b"{}", "1_Pooling/config.json": b"{}"}))
    assert set(files) == {"config.json", "1_Pooling/config.json"}


@pytest.mark.parametrize(
    "name",
    [
        "../evil",
        "/etc/passwd",
        "a/../../b",
        "a\\..\\b",
        ".",
        "a//b",
        "x" * 300,
        "weights.bin",
        "model.pt",
        "data.pkl",
        "a/b/c/d/e",
    ],
)
def test_bad_member_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArtifact):
        _read(_tar({name: b"{}"}))


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE])
def test_links_and_special_members_are_refused(kind: bytes) -> None:
    with pytest.raises(InvalidArtifact, match="link or special"):
        _read(_tar({"config.json": b"{}"}, link=("tokenizer.json", "/etc/passwd", kind)))


def test_zip_symlink_pickle_duplicates_and_size() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("config.json")
        info.external_attr = 0o120777 << 16  # a symlink
        z.writestr(info, "/etc/passwd")
    with pytest.raises(InvalidArtifact, match="link"):
        _read(buf.getvalue())
    with pytest.raises(InvalidArtifact, match="pickle"):
        _read(_tar({"model.safetensors": pickle.dumps({"a": 1})}))
    with pytest.raises(InvalidArtifact, match="too large"):
        _read(_tar({"a.json": b"x" * 100}), 50)
    with pytest.raises(InvalidArtifact):
        _read(b"not an archive at all")


def test_encoder_bundle_rules() -> None:
    assert open_bundle(_tar(_encoder_files())).hidden_size == 8
    bad_configs = [
        {**CONFIG, "model_type": "gpt2"},
        {**CONFIG, "auto_map": {"AutoModel": "evil.Model"}},
        {"model_type": "bert"},
    ]
    for cfg in bad_configs:
        with pytest.raises(InvalidArtifact):
            open_bundle(_tar(_encoder_files(**{"config.json": json.dumps(cfg).encode()})))
    with pytest.raises(InvalidArtifact, match="lacks"):
        open_bundle(_tar({"config.json": _encoder_files()["config.json"]}))
    pooling = json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}).encode()
    with pytest.raises(InvalidArtifact, match="mean pooling"):
        open_bundle(_tar(_encoder_files(**{"1_Pooling/config.json": pooling})))
    with pytest.raises(InvalidArtifact):
        check_safetensors_header(struct.pack("<Q", 10**9) + b"{}")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 400]}}).encode()
    with pytest.raises(InvalidArtifact, match="outside"):
        check_safetensors_header(struct.pack("<Q", len(header)) + header + b"\0" * 4)
