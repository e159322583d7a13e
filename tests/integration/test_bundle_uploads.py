"""Bombs and damaged bundles through the upload API: 422 with a message, and nothing stored (no
version, no blob, no spooled upload left behind). Bundles written the usual ways are accepted."""

from __future__ import annotations

import gzip
from collections.abc import Callable

import pytest

from service.settings import Settings
from tests import bombs
from tests.hf_tiny import tiny_bundle
from tests.integration.helpers import register

UPLOAD_LIMIT = 8 << 20

BOMBS: dict[str, Callable[[bytes], bytes]] = {
    "sparse-tar": lambda _t: bombs.sparse_tar(),
    "lying-size-over-budget": lambda _t: bombs.lying_tar(3 * bombs.GIB // 2, b"{}"),
    "zip-of-zeros": lambda _t: bombs.zip_of_zeros(),
    "200k-directories": lambda _t: bombs.many_directories(),
    "huge-vocab": bombs.huge_vocab_bundle,
    "truncated-tar.gz": bombs.truncated_gz,
    "lying-tar-header": lambda _t: bombs.lying_tar(10, b'{"a": 1}' + b" " * 3000),
    "bad-zip-crc": lambda t: bombs.zip_with_bad_crc(bombs.members_of(t)),
    "random-bytes": lambda _t: bytes(range(256)) * 64,
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_upload_bytes": UPLOAD_LIMIT})


@pytest.fixture(scope="module")
def tiny() -> bytes:
    return tiny_bundle()


def _stored(settings: Settings) -> list[str]:
    root = settings.blob_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("bomb", list(BOMBS))
async def test_bombs_and_damaged_bundles_answer_422_and_store_nothing(
    client, settings: Settings, tiny: bytes, bomb: str
) -> None:
    assert (await register(client, "enc", tiny, "hf-encoder")).status_code == 201
    before = (await client.get("/v1/models/enc")).json()["versions"]
    blobs = _stored(settings)
    r = await register(client, "enc", BOMBS[bomb](tiny), "hf-encoder")
    assert r.status_code == 422, r.text
    assert r.json()["code"] and r.json()["error"], r.text
    assert (await client.get("/v1/models/enc")).json()["versions"] == before == [1]
    assert _stored(settings) == blobs  # no new blob, no spooled upload left in tmp/


async def test_bundles_made_the_usual_way_are_accepted(client, tiny: bytes) -> None:
    files = bombs.members_of(tiny)
    for data in (
        bombs.dot_tar({**files, "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}'}),
        bombs.plain_zip(files),
        bombs.plain_zip(files, attr=0o644 << 16),
        gzip.compress(bombs.dot_tar(files)),
    ):
        r = await register(client, "usual", data, "hf-encoder")
        assert r.status_code == 201, r.text
    assert (await client.get("/v1/models/usual")).json()["versions"] == [1, 2, 3, 4]
