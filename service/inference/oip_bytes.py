"""BYTES tensors at the gateway, bounded before anything is allocated.

JSON: `data` holds strings only (flat or nested as the shape), UTF-8 encoded onto the wire.
Anything else (objects, numbers, null) is refused naming the input: `bytes(64)` would otherwise
make 64 zero bytes out of a 27-byte request, and `bytes(300000000)` 300 MB.
Binary extension: each element is a 4-byte little-endian length and that many bytes; the count
is bounded before walking, every length prefix is checked against what is left of the buffer and
against the total bound, and nothing is copied (the buffer is passed on as it came).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from service.errors import InvalidInput, PayloadTooLarge

_LEN = struct.Struct("<I")
MAX_NESTING = 16  # as many levels as a shape may have dimensions


@dataclass(frozen=True, slots=True)
class BytesLimits:
    max_elements: int = 1 << 20  # elements of one BYTES input
    max_total: int = 64 << 20  # bytes of element contents of one BYTES input, prefixes not counted


def check_count(name: str, count: int, limits: BytesLimits) -> None:
    """Refuse a BYTES input by its declared shape alone, before any of its data is looked at."""
    if count > limits.max_elements:
        raise PayloadTooLarge(f"input {name!r}: more than {limits.max_elements} BYTES elements")


def _too_large(name: str, limits: BytesLimits) -> PayloadTooLarge:
    return PayloadTooLarge(f"input {name!r}: BYTES data is over {limits.max_total} bytes")


def check_wire(name: str, buf: bytes | memoryview, count: int, limits: BytesLimits) -> None:
    """Check binary BYTES data: exactly `count` length-prefixed elements, nothing left over."""
    check_count(name, count, limits)
    end = len(buf)
    if count * _LEN.size > end:
        raise InvalidInput(f"input {name!r}: {end} bytes cannot hold {count} BYTES elements")
    if end - count * _LEN.size > limits.max_total:
        raise _too_large(name, limits)
    unpack, pos = _LEN.unpack_from, 0
    for _ in range(count):
        if pos + 4 > end:
            raise InvalidInput(f"input {name!r}: BYTES data is truncated")
        pos += 4 + unpack(buf, pos)[0]
    if pos > end:
        raise InvalidInput(f"input {name!r}: a BYTES length prefix runs past the end of the data")
    if pos != end:
        raise InvalidInput(f"input {name!r}: BYTES data has {end - pos} trailing bytes")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _strings(name: str, data: list[Any], count: int) -> list[str]:
    """The strings of `data` in row-major order; only strings and lists of them are accepted."""
    if len(data) == count and all(type(x) is str for x in data):
        return data  # the flat form every stock client sends
    out: list[str] = []
    stack: list[tuple[list[Any], int, int]] = [(data, 0, 1)]  # (list, next index, depth)
    while stack and len(out) <= count:
        items, start, depth = stack.pop()
        for i in range(start, len(items)):
            item = items[i]
            if type(item) is str:
                out.append(item)
            elif type(item) is list and depth < MAX_NESTING:
                stack.append((items, i + 1, depth))
                stack.append((item, 0, depth + 1))
                break
            else:
                raise InvalidInput(f"input {name!r}: BYTES data must be strings, got {_kind(item)}")
    if len(out) != count:
        raise InvalidInput(f"input {name!r}: {len(out)} strings given for {count} elements")
    return out


def from_json(name: str, data: Any, count: int, limits: BytesLimits) -> bytes:
    """JSON `data` of a BYTES input -> the wire format (length-prefixed UTF-8)."""
    check_count(name, count, limits)
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: data must be a list")
    parts: list[bytes] = []
    total = 0
    try:
        for s in _strings(name, data, count):
            b = s.encode()
            total += len(b)
            if total > limits.max_total:
                raise _too_large(name, limits)
            parts.append(_LEN.pack(len(b)))
            parts.append(b)
    except UnicodeEncodeError as exc:  # a lone surrogate escape ("\ud800")
        raise InvalidInput(f"input {name!r}: a string is not valid Unicode") from exc
    return b"".join(parts)
