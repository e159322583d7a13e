"""Bundles are read streaming and bounded: bombs (sparse or lying tar headers, zips of zeros,
200,000 directories, a config naming a huge vocabulary) are refused before anything large is
read or allocated; damaged archives are refused as such; bundles written the usual ways pass."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import pytest

from model_store.bundles import Keep, read_bundle
from model_store.errors import InvalidArtifact
from model_store.formats import validate
from model_store.hf_encoder import open_bundle, validate_hf_encoder
from model_store.limits import ArtifactLimits, budget_from
from service.settings import Settings
from tests import bombs
from tests.hf_tiny import tiny_bundle

LIMITS = ArtifactLimits()


class Counting(io.BytesIO):
    """A file whose reads are counted: proves how little of an archive was looked at."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, n: int | None = -1, /) -> bytes:
        data = super().read(n)
        self.bytes_read += len(data)
        return data


@pytest.fixture(scope="module")
def tiny() -> bytes:
    return tiny_bundle()


def test_one_budget_from_the_settings() -> None:
    s = Settings(max_upload_bytes=8 << 20, bundle_expansion_factor=4, max_unpacked_bytes=1 << 30)
    assert s.artifact_limits.max_unpacked_bytes == 32 << 20
    capped = Settings(max_upload_bytes=1 << 30, bundle_expansion_factor=10, max_unpacked_bytes=2 << 30)
    assert capped.artifact_limits.max_unpacked_bytes == 2 << 30
    assert budget_from(100, 3, 1000) == 300
    # an archive may unpack to max_ratio times its own size (at least 1 MiB), never past the budget
    assert LIMITS.unpacked_budget(10 << 20) == 1000 << 20
    assert ArtifactLimits(max_unpacked_bytes=5 << 20).unpacked_budget(10 << 20) == 5 << 20


def test_sparse_tar_declaring_gigabytes_is_refused_before_reading() -> None:
    data = bombs.sparse_tar(3 * bombs.GIB // 2)
    assert len(data) < 4096
    with pytest.raises(InvalidArtifact, match="sparse"):
        read_bundle(io.BytesIO(data), LIMITS)


@pytest.mark.parametrize("declared", [3 * bombs.GIB // 2, 5 << 20])
def test_a_header_declaring_more_than_the_budget_is_refused_before_reading(declared: int) -> None:
    f = Counting(bombs.lying_tar(declared, b"{}"))
    with pytest.raises(InvalidArtifact, match="too large unpacked"):
        read_bundle(f, ArtifactLimits(max_unpacked_bytes=4 << 20, max_ratio=10**6))
    assert f.bytes_read <= 16 << 10


def test_lying_tar_headers_are_corrupt() -> None:
    with pytest.raises(InvalidArtifact, match="corrupt"):  # says less: the rest is no header
        read_bundle(io.BytesIO(bombs.lying_tar(10, b'{"a": 1}' + b" " * 3000)), LIMITS)
    with pytest.raises(InvalidArtifact, match="corrupt"):  # says more than the archive holds
        read_bundle(io.BytesIO(bombs.lying_tar(100_000, b'{"a": 1}')), LIMITS)


def test_zip_of_zeros_is_refused_by_its_ratio_and_by_the_running_budget() -> None:
    data = bombs.zip_of_zeros()
    with pytest.raises(InvalidArtifact, match="compressed more than 100:1"):
        read_bundle(io.BytesIO(data), LIMITS)
    # with the ratio check out of the way, the bytes actually unpacked are counted
    with pytest.raises(InvalidArtifact, match="too large unpacked"):
        read_bundle(io.BytesIO(data), ArtifactLimits(max_unpacked_bytes=8 << 20, max_ratio=10**6))


def test_200000_directories_stop_at_the_member_limit() -> None:
    f = Counting(bombs.many_directories())
    with pytest.raises(InvalidArtifact, match="more than 256 entries"):
        read_bundle(f, LIMITS)
    assert f.bytes_read < 512 << 10  # of about 2 MB: iteration stopped at the limit


def test_zip_entry_count_is_checked_before_zipfile_parses_the_directory() -> None:
    data = bombs.plain_zip({f"d{i}/": b"" for i in range(300)})
    with pytest.raises(InvalidArtifact, match="more than 256 entries"):
        read_bundle(io.BytesIO(data), LIMITS)


def test_gzip_bomb_inside_a_tar_is_bounded() -> None:
    import gzip

    data = gzip.compress(bombs.tar_of({"config.json": bytes(64 << 20)}), compresslevel=1)
    with pytest.raises(InvalidArtifact, match="too large unpacked"):
        read_bundle(io.BytesIO(data), LIMITS)  # 64 MiB from ~64 KB: over 100 times its size


@pytest.mark.parametrize(
    "make",
    [
        lambda t: bombs.truncated_gz(t),
        lambda t: bombs.zip_with_bad_crc(bombs.members_of(t)),
        lambda t: bytes(range(256)) * 64,
        lambda t: t[: len(t) // 2],
        lambda t: t + b"trailing junk" + bytes(499),
    ],
    ids=["truncated-tar.gz", "bad-zip-crc", "random-bytes", "truncated-tar", "junk-after-end"],
)
def test_damaged_archives_are_refused_as_such(tiny: bytes, make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArtifact):
        validate_hf_encoder(io.BytesIO(make(tiny)), None, LIMITS)


def test_huge_vocabulary_is_refused_before_any_model_is_built(tiny: bytes) -> None:
    with pytest.raises(InvalidArtifact, match="vocab_size"):
        open_bundle(io.BytesIO(bombs.huge_vocab_bundle(tiny)), LIMITS)
    # within the per-field bounds, the estimated parameter count is held to the setting
    with pytest.raises(InvalidArtifact, match="parameters"):
        open_bundle(
            io.BytesIO(bombs.huge_vocab_bundle(tiny, vocab=900_000)), ArtifactLimits(max_parameters=10**7)
        )


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"vocab_size": 30}, "word_embeddings"),  # the weights hold 26 rows
        ({"num_hidden_layers": 10_000}, "num_hidden_layers"),
        ({"hidden_size": 32, "num_attention_heads": 5}, "multiple"),
        ({"num_labels": 10**9}, "num_labels"),
        ({"max_position_embeddings": 10**7}, "max_position_embeddings"),
        ({"intermediate_size": -1}, "intermediate_size"),
        ({"type_vocab_size": True}, "type_vocab_size"),
    ],
)
def test_config_sizes_are_bounded_and_agree_with_the_weights(tiny: bytes, override, match) -> None:  # type: ignore[no-untyped-def]
    files = bombs.members_of(tiny)
    config = {**json.loads(files["config.json"]), **override}
    bundle = bombs.tar_of({**files, "config.json": json.dumps(config).encode()})
    with pytest.raises(InvalidArtifact, match=match):
        validate_hf_encoder(io.BytesIO(bundle), None, LIMITS)


def test_safetensors_header_is_bounded_and_checked(tiny: bytes) -> None:
    files = bombs.members_of(tiny)
    huge = struct.pack("<Q", 64 << 20) + b"{" + b" " * 100
    with pytest.raises(InvalidArtifact, match="oversized header"):
        validate_hf_encoder(io.BytesIO(bombs.tar_of({**files, "model.safetensors": huge})), None, LIMITS)
    header = json.dumps(
        {"embeddings.word_embeddings.weight": {"dtype": "F32", "shape": [10**6, 32], "data_offsets": [0, 4]}}
    ).encode()
    lying = struct.pack("<Q", len(header)) + header + b"\0" * 4
    with pytest.raises(InvalidArtifact, match="dtype and shape"):
        validate_hf_encoder(io.BytesIO(bombs.tar_of({**files, "model.safetensors": lying})), None, LIMITS)


def test_validation_keeps_only_the_weights_header() -> None:
    files = {"model.safetensors": b"x" * 100_000, "notes.txt": b"y" * 1000, "config.json": b"{}"}
    keep = Keep(only=("config.json",), prefixes={"model.safetensors": 16})
    bundle = read_bundle(io.BytesIO(bombs.tar_of(files)), LIMITS, keep)
    assert bundle.files == {"config.json": b"{}", "model.safetensors": b"x" * 16}
    assert bundle.sizes == {"model.safetensors": 100_000, "notes.txt": 1000, "config.json": 2}
    with pytest.raises(InvalidArtifact, match="over its 1-byte limit"):
        read_bundle(io.BytesIO(bombs.tar_of(files)), LIMITS, Keep(caps={"config.json": 1}))


@pytest.mark.parametrize("attr", [0, 0o644 << 16, 0o100644 << 16])
def test_zips_written_by_python_zipfile_are_accepted(tiny: bytes, attr: int) -> None:
    data = bombs.plain_zip(bombs.members_of(tiny), attr=attr)
    assert validate_hf_encoder(io.BytesIO(data), None, LIMITS).outputs[0].shape == (-1, 32)


def test_zip_symlinks_are_still_refused() -> None:
    data = bombs.plain_zip({"config.json": b"/etc/passwd"}, attr=0o120777 << 16)
    with pytest.raises(InvalidArtifact, match="link or special"):
        read_bundle(io.BytesIO(data), LIMITS)
    assert zipfile.is_zipfile(io.BytesIO(data))


def test_tar_minus_C_dir_dot_is_accepted(tiny: bytes, tmp_path: Path) -> None:
    pooling = json.dumps({"pooling_mode_mean_tokens": True}).encode()
    files = {**bombs.members_of(tiny), "1_Pooling/config.json": pooling, ".gitattributes": b"*"}
    path = tmp_path / "minilm.tar"
    path.write_bytes(bombs.dot_tar(files))
    sig = validate("hf-encoder", path, None, LIMITS)  # the sandbox's entry point: from a path
    assert sig.outputs[0].shape == (-1, 32)
    bundle = open_bundle(path, LIMITS)
    assert set(bundle.files) == set(files)


@pytest.mark.parametrize("name", ["./..", "./.", "a/./b", "./a/../b"])
def test_dot_segments_other_than_a_leading_dot_slash_are_refused(name: str) -> None:
    with pytest.raises(InvalidArtifact, match="plain relative path"):
        read_bundle(io.BytesIO(bombs.tar_of({name: b"{}"})), LIMITS)
