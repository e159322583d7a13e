"""GGUF versions, converted once: the dequantised model as an hf-causal-lm bundle, kept next to
the blob store and keyed by the GGUF blob's sha256.

Loading a GGUF file means dequantising every tensor and rebuilding the tokenizer from its
metadata (about 18 s for SmolLM2-135M on one core; 40-60 s on a busy 2-core machine); loading
the converted bundle takes a fraction of that. Every process that loads a GGUF version in a
fenced child uses the cache: the generation worker (workers/generation/fenced.py) and the
fine-tune children (the trainer, the dry run's model check: workers/contract/finetune_check.py).
A child that converts writes the bundle into its own directory; its parent copies it out
(opened without following links, a regular file with one link, size-bounded), hashes it while
copying and records that sha256 beside it. A later load hands the child the bundle and its
recorded sha256, which the child checks before parsing it like any uploaded bundle (bounded, no
pickle, no remote code). A bundle that fails to load is deleted and the GGUF file is loaded (and
converted) again (generation); a fine-tune child loads the GGUF file when the bundle cannot be
read or does not match its recorded sha256.

Layout: <blob root>/derived/hf-causal-lm/<gguf sha256>.tar and <gguf sha256>.json
({"sha256": <the bundle's>}).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path

_CHUNK = 1 << 20
SUBDIR = Path("derived") / "hf-causal-lm"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_sha256(value: object) -> bool:
    """A cache key or a recorded digest: 64 lowercase hex digits, never a path."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def cache_dir_for(blob: Path, sha256: str) -> Path | None:
    """The conversion cache of a blob in a BlobStore layout (<root>/sha256/<ab>/<sha256>); None
    for a file elsewhere (no cache)."""
    if blob.name != sha256 or blob.parent.name != sha256[:2] or blob.parent.parent.name != "sha256":
        return None
    return blob.parent.parent.parent / SUBDIR


def cached_for_blob(blob: Path, sha256: str) -> tuple[Path, str] | None:
    """The converted bundle of a blob in a BlobStore layout and its recorded sha256, if any."""
    cache = cache_dir_for(blob, sha256)
    return None if cache is None else cached(cache, sha256)


def cached(cache: Path, sha256: str) -> tuple[Path, str] | None:
    """The converted bundle and its recorded sha256, when both are there."""
    if not is_sha256(sha256):
        return None
    bundle, meta = cache / f"{sha256}.tar", cache / f"{sha256}.json"
    try:
        recorded = json.loads(meta.read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None
    if not is_sha256(recorded) or not bundle.is_file():
        return None
    return bundle, recorded


def forget(cache: Path, sha256: str) -> None:
    for name in (f"{sha256}.json", f"{sha256}.tar"):
        with contextlib.suppress(FileNotFoundError):
            (cache / name).unlink()


def keep(cache: Path, sha256: str, produced: Path, max_bytes: int) -> None:
    """Copy the child's bundle into the cache (atomically, hashed while copied); the child's
    directory is removed with the child."""
    if not is_sha256(sha256):
        raise ValueError("a conversion is keyed by its GGUF blob's sha256")
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(produced, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_size > max_bytes:
            raise ValueError("the converted model is not a regular file of a bounded size")
        digest = hashlib.sha256()
        tmp_fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=".converting-")
        try:
            with os.fdopen(tmp_fd, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp_name, cache / f"{sha256}.tar")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
    meta_tmp = cache / f".{sha256}.json.tmp"
    meta_tmp.write_text(json.dumps({"sha256": digest.hexdigest()}))
    os.replace(meta_tmp, cache / f"{sha256}.json")
