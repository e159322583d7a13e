"""Content-addressed artifact storage on a local directory.

Paths come only from sha256 digests computed here, never from a request.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

from model_store.errors import ArtifactTooLarge, IntegrityFailure, NotFound

_CHUNK = 1 << 20


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise NotFound("no such blob")
        return self.root / "sha256" / sha256[:2] / sha256

    def new_tempfile(self) -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix="upload-")
        return fd, Path(name)

    async def receive(self, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[Path, str, int]:
        """Stream an upload to a temp file while hashing; refuse past max_bytes."""
        fd, tmp = self.new_tempfile()
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise ArtifactTooLarge(f"artifact is over the {max_bytes}-byte limit")
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, digest.hexdigest(), size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        sha = hashlib.sha256(data).hexdigest()
        fd, tmp = self.new_tempfile()
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        self.commit(tmp, sha)
        return sha, len(data)

    def commit(self, tmp: Path, sha256: str) -> Path:
        """Move a verified temp file into place (atomic rename; identical content dedupes)."""
        dest = self.path_for(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, dest)
            os.chmod(dest, 0o444)
        return dest

    def delete(self, sha256: str) -> bool:
        """Unlink a blob (callers check first that nothing references it: model_store/blob_refs.py)."""
        try:
            self.path_for(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def open_verified(self, sha256: str, chunk: int = _CHUNK) -> tuple[int, Iterator[bytes]]:
        """The blob's size and its bytes in chunks, never whole in memory; the iterator raises
        IntegrityFailure at the end if they did not hash to the digest (a streamed response is
        then cut short, so the client never takes bad bytes for good ones)."""
        path = self.path_for(sha256)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise IntegrityFailure("artifact bytes are missing from the store") from exc

        def chunks() -> Iterator[bytes]:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(chunk):
                    digest.update(block)
                    yield block
            if digest.hexdigest() != sha256:
                raise IntegrityFailure("artifact bytes do not match the sha256 recorded at registration")

        return size, chunks()

    def read_verified(self, sha256: str) -> bytes:
        """The blob's bytes, refused if they no longer hash to the recorded digest."""
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise IntegrityFailure("artifact bytes are missing from the store") from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityFailure("artifact bytes do not match the sha256 recorded at registration")
        return data


def sha256_of(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()
