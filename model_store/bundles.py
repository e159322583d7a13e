"""Directory-shaped artifacts travel as one archive (tar, tar.gz or zip): the bundle.

Every member is checked before anything is used: regular files only (no links, devices or
other special members), relative paths of plain segments (no `..`, no absolute paths, no
backslashes), bounded count and size, no duplicates, nothing that can hold a pickle. Bundles
are read into memory and never extracted, so no path from an archive ever touches the disk.
"""

from __future__ import annotations

import io
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from typing import IO

from model_store.errors import InvalidArtifact

MAX_MEMBERS = 256
MAX_DEPTH = 4
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PICKLE_EXTENSIONS = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def check_member_name(raw: str) -> str:
    name = raw[2:] if raw.startswith("./") else raw
    parts = name.split("/")
    if not name or len(parts) > MAX_DEPTH or not all(_SEGMENT.match(p) for p in parts):
        raise InvalidArtifact(f"bundle member name {raw[:80]!r} is not a plain relative path")
    if name.lower().endswith(_PICKLE_EXTENSIONS):
        raise InvalidArtifact(f"bundle member {name!r} may hold a pickle; use safetensors")
    return name


def read_bundle(data: bytes, max_total: int) -> dict[str, bytes]:
    """The bundle's files by relative path, after every check above."""
    members = _zip_members(data) if data[:4] == b"PK\x03\x04" else _tar_members(data)
    files: dict[str, bytes] = {}
    total = 0
    for raw_name, size, read in members:
        name = check_member_name(raw_name)
        if name in files:
            raise InvalidArtifact(f"bundle member {name!r} appears twice")
        total += size
        if len(files) >= MAX_MEMBERS or total > max_total:
            raise InvalidArtifact("bundle has too many members or is too large unpacked")
        body = read()
        if len(body) != size:
            raise InvalidArtifact(f"bundle member {name!r} is truncated")
        if body[:2] in _PICKLE_MAGIC:
            raise InvalidArtifact(f"bundle member {name!r} is a pickle; pickles are refused")
        files[name] = body
    if not files:
        raise InvalidArtifact("bundle is empty")
    return files


_Member = tuple[str, int, "ReadFn"]


class ReadFn:
    def __init__(self, fileobj: IO[bytes] | None) -> None:
        self._f = fileobj

    def __call__(self) -> bytes:
        return self._f.read() if self._f is not None else b""


def _tar_members(data: bytes) -> Iterator[_Member]:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 (closed below)
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidArtifact("bundle is not a tar, tar.gz or zip archive") from exc
    with archive:
        try:
            for info in archive:
                if info.isdir():
                    continue
                if not info.isreg():
                    raise InvalidArtifact(f"bundle member {info.name[:80]!r} is a link or special file")
                yield info.name, info.size, ReadFn(archive.extractfile(info))
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise InvalidArtifact("bundle archive is corrupt") from exc


def _zip_members(data: bytes) -> Iterator[_Member]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise InvalidArtifact("bundle is not a valid zip archive") from exc
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            mode = info.external_attr >> 16
            if mode and not stat.S_ISREG(mode):
                raise InvalidArtifact(f"bundle member {info.filename[:80]!r} is a link or special file")
            try:
                yield info.filename, info.file_size, ReadFn(archive.open(info))
            except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
                raise InvalidArtifact("bundle archive is corrupt") from exc
