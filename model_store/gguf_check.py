"""A GGUF file's header, read and bounded before transformers dequantises anything.

GGUF (llama.cpp's format) is a header of typed key/value metadata and tensor descriptions, then
the aligned tensor data. Nothing in it is code, but gguf-py trusts its counts and sizes (a file
that claims 2^60 tensors, or an array of 2^40 strings, makes it allocate or loop without end).
`read_gguf` walks the header itself, streamed, with every count and length bounded, keeps the
scalar metadata and the lengths of arrays, and checks that every tensor is of a known type, of a
bounded shape and lies inside the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from model_store.errors import InvalidArtifact

MAGIC = b"GGUF"
MAX_KV = 65_536
MAX_TENSORS = 65_536
MAX_KEY = 1024
MAX_STRING = 4 << 20  # one metadata string (a chat template is the longest)
MAX_ARRAY = 1 << 22  # elements of one metadata array (a vocabulary)
MAX_DIMS = 4
# ggml tensor types: (elements per block, bytes per block); gguf-py's GGML_QUANT_SIZES
GGML_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
}  # fmt: skip
# metadata value types: struct format of the scalars; 8 string, 9 array
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass(slots=True)
class GGUFTensor:
    name: str
    dims: tuple[int, ...]  # ggml order (fastest-varying first)
    ggml_type: int
    offset: int

    @property
    def elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    def nbytes(self) -> int:
        block, size = GGML_BLOCKS[self.ggml_type]
        return self.elements // block * size


@dataclass(slots=True)
class GGUFInfo:
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)  # scalars; arrays as {"array": length}
    tensors: list[GGUFTensor] = field(default_factory=list)
    data_start: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def array_len(self, key: str) -> int:
        value = self.metadata.get(key)
        return int(value["array"]) if isinstance(value, dict) else 0


def is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == MAGIC


class _Reader:
    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f = f
        self.size = size

    def take(self, n: int) -> bytes:
        if n > self.size - self.f.tell():
            raise InvalidArtifact("GGUF file is truncated (its header runs past the end)")
        return self.f.read(n)

    def skip(self, n: int) -> None:
        if n > self.size - self.f.tell():
            raise InvalidArtifact("GGUF file is truncated (its header runs past the end)")
        self.f.seek(n, 1)

    def num(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self, limit: int = MAX_STRING) -> str:
        n = self.num("<Q")
        if n > limit:
            raise InvalidArtifact(f"GGUF header has a string of {n} bytes (at most {limit})")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.num(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise InvalidArtifact(f"GGUF metadata has an unknown value type {kind}")
        item, count = self.num("<I"), self.num("<Q")
        if count > MAX_ARRAY:
            raise InvalidArtifact(f"GGUF metadata array of {count} elements (at most {MAX_ARRAY})")
        if item in _SCALARS:
            self.skip(count * struct.calcsize(_SCALARS[item]))
        elif item == _STRING:
            for _ in range(count):
                n = self.num("<Q")
                if n > MAX_STRING:
                    raise InvalidArtifact(f"GGUF header has a string of {n} bytes (at most {MAX_STRING})")
                self.skip(n)
        else:
            raise InvalidArtifact("GGUF metadata holds nested arrays; refused")
        return {"array": count}


def read_gguf(path: Path) -> GGUFInfo:
    """The header of a GGUF file (version 2 or 3), every count bounded, every tensor inside the file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        r = _Reader(f, size)
        if r.take(4) != MAGIC:
            raise InvalidArtifact("not a GGUF file")
        version = r.num("<I")
        if version not in (2, 3):
            raise InvalidArtifact(f"GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = r.num("<Q"), r.num("<Q")
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise InvalidArtifact("GGUF header declares too many tensors or metadata entries")
        info = GGUFInfo(version)
        for _ in range(n_kv):
            key = r.string(MAX_KEY)
            info.metadata[key] = r.value(r.num("<I"))
        for _ in range(n_tensors):
            info.tensors.append(_tensor(r))
        align = info.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or not 1 <= align <= 1 << 16 or align & (align - 1):
            raise InvalidArtifact("GGUF general.alignment must be a power of two")
        info.data_start = -(-f.tell() // align) * align
    _check_tensors(info, size, align)
    return info


def _tensor(r: _Reader) -> GGUFTensor:
    name = r.string(MAX_KEY)
    n_dims = r.num("<I")
    if not 1 <= n_dims <= MAX_DIMS:
        raise InvalidArtifact(f"GGUF tensor {name[:64]!r} has {n_dims} dimensions")
    dims = tuple(r.num("<Q") for _ in range(n_dims))
    ggml_type, offset = r.num("<I"), r.num("<Q")
    if ggml_type not in GGML_BLOCKS:
        raise InvalidArtifact(f"GGUF tensor {name[:64]!r} has an unknown type {ggml_type}")
    if any(d == 0 or d > 1 << 32 for d in dims):
        raise InvalidArtifact(f"GGUF tensor {name[:64]!r} has an invalid shape")
    return GGUFTensor(name, dims, ggml_type, offset)


def _check_tensors(info: GGUFInfo, size: int, align: int) -> None:
    seen: set[str] = set()
    for t in info.tensors:
        if t.name in seen:
            raise InvalidArtifact(f"GGUF tensor {t.name[:64]!r} appears twice")
        seen.add(t.name)
        block = GGML_BLOCKS[t.ggml_type][0]
        if t.dims[0] % block or t.offset % align:
            raise InvalidArtifact(f"GGUF tensor {t.name[:64]!r} is misaligned or not whole blocks")
        if info.data_start + t.offset + t.nbytes() > size:
            raise InvalidArtifact(f"GGUF tensor {t.name[:64]!r} lies past the end of the file (truncated?)")
