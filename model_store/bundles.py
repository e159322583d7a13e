"""Directory-shaped artifacts travel as one archive (tar, tar.gz/.bz2/.xz or zip): the bundle.

Every member is checked before anything is used: regular files and directories only (no
links, devices or other special members), relative paths of plain segments (no `..`, no
absolute paths, no backslashes; a leading `./` and the `./` entry itself, as `tar -C dir .`
writes them, are fine), no duplicates, nothing that can hold a pickle. Bundles are never
extracted, so no path from an archive ever touches the disk.

Reading is streamed from a file and bounded (`ArtifactLimits`): entries, directories
included, are counted and iteration stops at the member limit; every member's bytes are
counted as they are actually read (not as declared) against one unpacked budget, which is
also at most `max_ratio` times the archive's size; decompressed tar streams (headers
included) are bounded the same way; a member whose header lies about its size, a truncated
or corrupt archive or a bad checksum is refused as corrupt. Callers say which members they
keep in memory (whole, or only a prefix); the others are read, counted and dropped.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from model_store.errors import InvalidArtifact
from model_store.limits import ArtifactLimits

MAX_DEPTH = 4
_CHUNK = 1 << 20
_SEGMENT = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,127}$")
_PICKLE_EXTENSIONS = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_ZIP_MAGIC = b"PK\x03\x04"
_HEADER_WINDOW = 1 << 20  # decompressed tar bytes allowed for one header (pax, long names) or the end
BLOCK_READ = 64 << 10
# what a damaged archive raises while it is read (zip: bad CRC, encrypted, unknown method)
_CORRUPT = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    RuntimeError,
    NotImplementedError,
    struct.error,
    ValueError,
)

Source = Path | IO[bytes]


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(slots=True)
class Bundle:
    files: dict[str, bytes] = field(default_factory=dict)  # kept members (or their prefixes)
    sizes: dict[str, int] = field(default_factory=dict)  # every file member's real size


@dataclass(frozen=True, slots=True)
class Keep:
    """Which members a reader holds in memory. `only`: keep these names (None: every member);
    `prefixes`: of these names keep only the first N bytes; `caps`: refuse these names above N."""

    only: Collection[str] | None = None
    prefixes: Mapping[str, int] = field(default_factory=dict)
    caps: Mapping[str, int] = field(default_factory=dict)

    def limit(self, name: str) -> int | None:
        if name in self.prefixes:
            return self.prefixes[name]
        return None if self.only is None or name in self.only else 0


def check_member_name(raw: str) -> str:
    name = raw[2:] if raw.startswith("./") else raw
    parts = name.split("/")
    if (
        not name
        or len(parts) > MAX_DEPTH
        or not all(_SEGMENT.match(p) and p not in (".", "..") for p in parts)
    ):
        raise InvalidArtifact(f"bundle member name {raw[:80]!r} is not a plain relative path")
    if name.lower().endswith(_PICKLE_EXTENSIONS):
        raise InvalidArtifact(f"bundle member {name!r} may hold a pickle; use safetensors")
    return name


def read_bundle(source: Source, limits: ArtifactLimits, keep: Keep | None = None) -> Bundle:
    """The bundle's members by relative path, after every check above. `source`: a path or a
    seekable binary file object (read from its current position to its end)."""
    with _opened(source) as f:
        start = f.tell()
        size = f.seek(0, 2) - start
        f.seek(start)
        head = f.read(4)
        f.seek(start)
        reader = _Reader(limits, limits.unpacked_budget(size), keep or Keep())
        try:
            if head == _ZIP_MAGIC:
                _walk_zip(f, reader)
            else:
                _walk_tar(f, reader)
        except InvalidArtifact:
            raise
        except _CORRUPT as exc:
            raise InvalidArtifact("bundle archive is corrupt or truncated") from exc
    if not reader.bundle.sizes:
        raise InvalidArtifact("bundle is empty")
    return reader.bundle


@contextmanager
def _opened(source: Source) -> Iterator[IO[bytes]]:
    if isinstance(source, Path):
        with source.open("rb") as f:
            yield f
    else:
        yield source


class _Reader:
    """Counts entries and unpacked bytes against the limits; keeps what the caller asked for."""

    def __init__(self, limits: ArtifactLimits, budget: int, keep: Keep) -> None:
        self.limits = limits
        self.budget = budget
        self.keep = keep
        self.used = 0
        self.entries = 0
        self.bundle = Bundle()

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_members:
            raise InvalidArtifact(
                f"bundle has more than {self.limits.max_members} entries (directories count)"
            )

    def directory(self, raw: str) -> None:
        self.entry()
        if raw.rstrip("/") not in ("", "."):
            check_member_name(raw.rstrip("/"))

    def declare(self, raw: str, declared: int) -> str:
        """Checks before any byte of a member is read: the entry count, its name, its declared size."""
        self.entry()
        name = check_member_name(raw)
        if name in self.bundle.sizes:
            raise InvalidArtifact(f"bundle member {name!r} appears twice")
        cap = self.keep.caps.get(name)
        if cap is not None and declared > cap:
            raise InvalidArtifact(f"bundle member {name!r} is over its {cap}-byte limit")
        self._charge(declared, 0)
        self.bundle.sizes[name] = -1
        return name

    def member(self, raw: str, declared: int, read: Callable[[int], bytes]) -> None:
        name = check_member_name(raw)
        self.bundle.sizes[name] = self._read(name, declared, read)

    def _charge(self, declared: int, actual: int) -> None:
        if self.used + declared > self.budget or actual > self.budget:
            raise InvalidArtifact(f"bundle is too large unpacked (over {self.budget} bytes)")

    def _read(self, name: str, declared: int, read: Callable[[int], bytes]) -> int:
        limit = self.keep.limit(name)
        kept: list[bytes] = []
        held = total = 0
        head = b""
        while chunk := read(_CHUNK):
            total += len(chunk)
            self.used += len(chunk)
            self._charge(0, self.used)
            if total > declared:
                raise InvalidArtifact(f"bundle member {name!r} is larger than its header says")
            if len(head) < 2:
                head = (head + chunk)[:2]
                if head in _PICKLE_MAGIC:
                    raise InvalidArtifact(f"bundle member {name!r} is a pickle; pickles are refused")
            if limit is None or held < limit:
                part = chunk if limit is None else chunk[: limit - held]
                kept.append(part)
                held += len(part)
        if total != declared:
            raise InvalidArtifact(f"bundle member {name!r} is truncated (its header says {declared} bytes)")
        if limit != 0:
            self.bundle.files[name] = b"".join(kept)
        return total


# tar -------------------------------------------------------------------------------------------
_EOF_HEADER: type[Exception] = tarfile.__dict__["EOFHeaderError"]  # not in typeshed


class _StrictInfo(tarfile.TarInfo):
    """A header that fails its checksum, or an archive that ends without its end marker, is
    corrupt (tarfile itself would silently stop iterating there); GNU sparse members are refused
    before tarfile reads their maps."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Any:
        try:
            info = super().frombuf(buf, encoding, errors)
        except _EOF_HEADER:  # the end-of-archive marker
            raise
        except tarfile.HeaderError as exc:
            raise InvalidArtifact("bundle archive is corrupt or truncated (bad tar header)") from exc
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise InvalidArtifact(_SPARSE)
        return info


_SPARSE = "bundle has a sparse member; write the bundle without --sparse"


class _Window:
    """A read-only stream that hands out bytes only up to a moving limit: the reader opens a
    window for each header (small) and for each member's data (its declared size), so no tar
    header (pax, GNU long name) and no stretch of a decompressed stream can grow past it."""

    def __init__(self, raw: _Readable) -> None:
        self._raw = raw
        self._count = 0
        self._limit = _HEADER_WINDOW

    def open(self, n: int) -> None:
        self._limit = self._count + n

    def read(self, n: int = -1) -> bytes:
        want = _CHUNK if n is None or n < 0 else n
        data = self._raw.read(min(want, self._limit + 1 - self._count))
        self._count += len(data)
        if self._count > self._limit:
            raise InvalidArtifact("bundle archive holds more data than its headers declare")
        return data


def _decompressed(f: IO[bytes]) -> _Readable:
    start = f.tell()
    magic = f.read(6)
    f.seek(start)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")
    if magic[:3] == b"BZh":
        return bz2.BZ2File(f)
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(f)
    return f


def _walk_tar(f: IO[bytes], reader: _Reader) -> None:
    stream = _Window(_decompressed(f))
    try:
        archive = tarfile.open(fileobj=stream, mode="r|", tarinfo=_StrictInfo)  # type: ignore[call-overload]  # noqa: SIM115 (closed below)
    except tarfile.ReadError as exc:
        raise InvalidArtifact("bundle is not a tar, tar.gz or zip archive") from exc
    with archive:
        while (info := archive.next()) is not None:
            if info.isdir():
                reader.directory(info.name)
            elif info.isreg() and info.issparse():
                raise InvalidArtifact(_SPARSE)
            elif info.isreg():
                reader.declare(info.name, info.size)
                stream.open(info.size + _HEADER_WINDOW)
                member = archive.extractfile(info)
                assert member is not None  # a regular file always has a reader
                with member:
                    reader.member(info.name, info.size, member.read)
            else:
                raise InvalidArtifact(f"bundle member {info.name[:80]!r} is a link or special file")
            archive.members.clear()  # stream mode keeps every TarInfo otherwise
            stream.open(_HEADER_WINDOW)
        rest = archive.fileobj
        assert rest is not None
        while chunk := rest.read(BLOCK_READ):  # the end marker and padding: zeros only
            if chunk.count(0) != len(chunk):
                raise InvalidArtifact("bundle archive has data after its end (a header lies about a size?)")


# zip -------------------------------------------------------------------------------------------
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def _zip_entry_count(f: IO[bytes]) -> int:
    """Entries the central directory declares, read from its end record (before zipfile parses
    every entry into memory)."""
    end = f.seek(0, 2)
    tail_at = max(0, end - (_EOCD.size + 0xFFFF))
    f.seek(tail_at)
    tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise InvalidArtifact("bundle is not a valid zip archive")
    count = int(_EOCD.unpack_from(tail, at)[4])
    locator_at = at - _ZIP64_LOCATOR.size
    if count == 0xFFFF and locator_at >= 0 and tail[locator_at : locator_at + 4] == b"PK\x06\x07":
        f.seek(int(_ZIP64_LOCATOR.unpack_from(tail, locator_at)[2]))
        record = f.read(_ZIP64_EOCD.size)
        if len(record) < _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
            raise InvalidArtifact("bundle is not a valid zip archive")
        count = int(_ZIP64_EOCD.unpack(record)[6])
    return count


def _zip_is_special(info: zipfile.ZipInfo) -> bool:
    """Unix file-type bits, when the entry has them: anything but a file or directory. Zips
    written without Unix modes (0, or permission bits alone, or a non-Unix creator) are files."""
    if info.create_system != 3:
        return False
    kind = stat.S_IFMT(info.external_attr >> 16)
    return kind not in (0, stat.S_IFREG, stat.S_IFDIR) or (kind == stat.S_IFDIR) != info.is_dir()


def _walk_zip(f: IO[bytes], reader: _Reader) -> None:
    start = f.tell()
    if _zip_entry_count(f) > reader.limits.max_members:
        raise InvalidArtifact(f"bundle has more than {reader.limits.max_members} entries (directories count)")
    f.seek(start)
    with zipfile.ZipFile(f) as archive:
        for info in archive.infolist():
            if _zip_is_special(info):
                raise InvalidArtifact(f"bundle member {info.filename[:80]!r} is a link or special file")
            if info.is_dir():
                reader.directory(info.filename)
                continue
            if info.file_size > max(info.compress_size * reader.limits.max_ratio, _CHUNK):
                raise InvalidArtifact(
                    f"bundle member {info.filename[:80]!r} is compressed more than "
                    f"{reader.limits.max_ratio}:1 (a zip bomb?)"
                )
            reader.declare(info.filename, info.file_size)
            with archive.open(info) as member:
                reader.member(info.filename, info.file_size, member.read)
