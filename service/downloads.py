"""Streamed blob downloads: a version's artifact, a dataset or results file. The bytes go out in
chunks from the blob store (never whole in memory), hashed on the way; a blob that no longer
matches its digest cuts the response short (Content-Length is sent, so a client sees a truncated
body, never bad bytes taken for good ones). The sha256 is the ETag."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from model_store.blobs import BlobStore
from model_store.registry import ResolvedVersion

_OCTET = "application/octet-stream"
# what an archive's first bytes say it is: (magic, offset) -> (extension, media type)
_ARCHIVES = (
    (b"PK\x03\x04", 0, "zip", "application/zip"),
    (b"\x1f\x8b", 0, "tar.gz", "application/gzip"),
    (b"BZh", 0, "tar.bz2", "application/x-bzip2"),
    (b"\xfd7zXZ\x00", 0, "tar.xz", "application/x-xz"),
    (b"ustar", 257, "tar", "application/x-tar"),
)


async def blob_response(blobs: BlobStore, sha256: str, filename: str, media_type: str) -> StreamingResponse:
    size, chunks = await run_in_threadpool(blobs.open_verified, sha256)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in filename)[:200] or "download"
    headers = {
        "Content-Length": str(size),
        "Content-Disposition": f'attachment; filename="{safe}"',
        "ETag": f'"{sha256}"',
        "X-Content-SHA256": sha256,
    }
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


def _sniff(blobs: BlobStore, sha256: str) -> tuple[str, str]:
    with blobs.path_for(sha256).open("rb") as f:
        head = f.read(512)
    for magic, offset, ext, media in _ARCHIVES:
        if head[offset : offset + len(magic)] == magic:
            return ext, media
    return "bin", _OCTET


async def version_response(blobs: BlobStore, version: ResolvedVersion) -> StreamingResponse:
    """The artifact as uploaded or exported: ONNX, TorchScript, or a bundle archive."""
    if version.format == "onnx":
        ext, media = "onnx", _OCTET
    elif version.format == "torchscript":
        ext, media = "pt", _OCTET
    else:
        ext, media = await run_in_threadpool(_sniff, blobs, version.sha256)
    name = f"{version.model}-v{version.version}.{ext}"
    return await blob_response(blobs, version.sha256, name, media)
