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
from model_store.hf_encoder import check_safetensors_header, open_bundle


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
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0\0\0\0"


def _encoder_files(**override: bytes) -> dict[str, bytes]:
    files = {
        "config.json": json.dumps({"model_type": "bert", "hidden_size": 8}).encode(),
        "model.safetensors": _safetensors(),
        "tokenizer.json": b"{}",
    }
    files.update(override)
    return files


def test_plain_members_are_read() -> None:
    files = read_bundle(_tar({"./config.json": b"{}", "1_Pooling/config.json": b"{}"}), 1 << 20)
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
        read_bundle(_tar({name: b"{}"}), 1 << 20)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE])
def test_links_and_special_members_are_refused(kind: bytes) -> None:
    with pytest.raises(InvalidArtifact, match="link or special"):
        read_bundle(_tar({"config.json": b"{}"}, link=("tokenizer.json", "/etc/passwd", kind)), 1 << 20)


def test_zip_symlink_pickle_duplicates_and_size() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("config.json")
        info.external_attr = 0o120777 << 16  # a symlink
        z.writestr(info, "/etc/passwd")
    with pytest.raises(InvalidArtifact, match="link"):
        read_bundle(buf.getvalue(), 1 << 20)
    with pytest.raises(InvalidArtifact, match="pickle"):
        read_bundle(_tar({"model.safetensors": pickle.dumps({"a": 1})}), 1 << 20)
    with pytest.raises(InvalidArtifact, match="too large"):
        read_bundle(_tar({"a.json": b"x" * 100}), 50)
    with pytest.raises(InvalidArtifact):
        read_bundle(b"not an archive at all", 1 << 20)


def test_encoder_bundle_rules() -> None:
    assert open_bundle(_tar(_encoder_files())).hidden_size == 8
    bad_configs = [
        {"model_type": "gpt2", "hidden_size": 8},
        {"model_type": "bert", "hidden_size": 8, "auto_map": {"AutoModel": "evil.Model"}},
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
