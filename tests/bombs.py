"""Archive bombs and damaged archives, built by the tests themselves (nothing downloaded): sparse
and lying tar headers, zips of zeros, hundreds of thousands of directories, an hf config that
names a huge vocabulary, truncated and corrupt archives; and honest bundles written the usual
ways (`tar -C dir .`, Python's zipfile without Unix modes)."""

from __future__ import annotations

import functools
import gzip
import io
import json
import tarfile
import zipfile

GIB = 1 << 30


def _checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)


def _octal(value: int, width: int = 12) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def tar_of(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def members_of(bundle: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        out = {}
        for info in tar.getmembers():
            member = tar.extractfile(info)
            if member is not None:
                out[info.name] = member.read()
        return out


def sparse_tar(declared: int = 3 * GIB // 2, name: str = "model.safetensors") -> bytes:
    """A GNU sparse member: one 512-byte region stored, `declared` bytes when unpacked (holes are
    zeros). What `tar -S` writes for a file that is mostly holes: about 10 KB on the wire."""
    info = tarfile.TarInfo(name)
    info.size = 512  # the bytes stored in the archive
    info.mode = 0o644
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:398] = _octal(declared - 512)  # the one region: at the end of the file
    header[398:410] = _octal(512)
    header[482:483] = b"\0"  # no extended sparse headers
    header[483:495] = _octal(declared)  # the real size
    _checksum(header)
    return bytes(header) + b"\1" * 512 + b"\0" * 1024


def lying_tar(declared: int, actual: bytes, name: str = "config.json") -> bytes:
    """A tar whose member header states `declared` bytes while `actual` follow it."""
    good = tar_of({name: actual, "tokenizer.json": b"{}"})
    header = bytearray(good[:512])
    header[124:136] = _octal(declared)
    _checksum(header)
    return bytes(header) + good[512:]


@functools.cache
def zip_of_zeros(size: int = GIB // 16, name: str = "model.safetensors") -> bytes:
    """A deflated zip whose one member unpacks to `size` zero bytes (a ratio of about 1000:1)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, z.open(name, "w", force_zip64=True) as out:
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            out.write(chunk)
    return buf.getvalue()


@functools.cache
def many_directories(count: int = 200_000) -> bytes:
    """A gzip-compressed tar (about 2 MB) of `count` empty directories, then one file."""
    block = bytearray(tarfile.TarInfo("d").tobuf(format=tarfile.USTAR_FORMAT))
    block[156:157] = tarfile.DIRTYPE
    block[0:100] = bytes(100)
    block[148:156] = b" " * 8
    base = sum(block)
    headers = []
    for i in range(count):
        name = b"d%07d" % i
        header = bytearray(block)
        header[0 : len(name)] = name
        header[148:156] = b"%06o\0 " % (base + sum(name))
        headers.append(bytes(header))
    return gzip.compress(b"".join(headers) + tar_of({"config.json": b"{}"}), compresslevel=1)


def huge_vocab_bundle(base: bytes, vocab: int = 50_000_000) -> bytes:
    """An hf-encoder bundle (`base`, e.g. tests.hf_tiny.tiny_bundle()) whose config.json names a
    vocabulary the worker would allocate `vocab * hidden` floats for (GBs), weights unchanged."""
    files = members_of(base)
    config = json.loads(files["config.json"])
    files["config.json"] = json.dumps({**config, "vocab_size": vocab}).encode()
    return tar_of(files)


def truncated_gz(bundle: bytes) -> bytes:
    data = gzip.compress(bundle)
    return data[: len(data) // 2]


def zip_with_bad_crc(files: dict[str, bytes]) -> bytes:
    data = bytearray(plain_zip(files, compression=zipfile.ZIP_STORED))
    first = next(iter(files.values()))
    at = data.find(first)
    data[at] ^= 0xFF  # the stored bytes no longer match the CRC in the headers
    return bytes(data)


def plain_zip(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED, attr: int = 0) -> bytes:
    """A zip as Python's zipfile writes one from names alone: no Unix file type in its modes
    (`attr`: 0, or permission bits such as 0o644 << 16)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, body in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = attr
            info.compress_type = compression
            z.writestr(info, body)
    return buf.getvalue()


def dot_tar(files: dict[str, bytes]) -> bytes:
    """What `tar -cf x.tar -C model_dir .` writes: a `./` entry, `./`-prefixed members and
    directories."""
    dirs = sorted({"./" + n.rsplit("/", 1)[0] for n in files if "/" in n})
    return tar_of({"./" + n: b for n, b in files.items()}, dirs=(".", *dirs))
