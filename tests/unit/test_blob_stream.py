"""Streamed blob reads (downloads): chunk by chunk, and a blob whose bytes no longer match its
digest raises at the end (the response is cut short, never completed with bad bytes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from model_store.blobs import BlobStore
from model_store.errors import IntegrityFailure


def test_chunks_then_a_check_of_the_digest(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = os.urandom(10_000)
    sha, _ = blobs.put_bytes(data)
    size, chunks = blobs.open_verified(sha, chunk=4096)
    parts = list(chunks)
    assert size == len(data) and b"".join(parts) == data and len(parts) == 3

    path = blobs.path_for(sha)
    path.chmod(0o644)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped on disk
    _, chunks = blobs.open_verified(sha, chunk=4096)
    with pytest.raises(IntegrityFailure):
        list(chunks)
    assert blobs.delete(sha) and not blobs.delete(sha)
    with pytest.raises(IntegrityFailure):
        blobs.open_verified(sha)
