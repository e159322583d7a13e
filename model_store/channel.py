"""The fence's pipe: frames of a JSON header and the raw buffers it announces.

The parent never unpickles what a fenced child sends: a header is JSON, buffers are bytes, and
every size is checked before anything is allocated.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

MAX_FRAME = 1 << 31


class FenceError(RuntimeError):
    """The fenced child failed outside the request it was given (a malformed frame, too)."""


class Channel:
    """Frames over one socket: a JSON header and the raw buffers it announces, written with one
    writev and read into one buffer (one wake-up of the other side per frame, no copies of
    tensor bytes beyond the socket's). Sizes are checked before anything is allocated."""

    _PREFIX = struct.Struct("<IQ")  # header bytes, body bytes

    def __init__(self, conn: Connection, max_frame: int = MAX_FRAME) -> None:
        self._conn = conn
        self._fd = conn.fileno()
        self._max = max_frame

    def send(self, header: dict[str, Any], buffers: Sequence[bytes | memoryview] = ()) -> None:
        sizes = [memoryview(b).nbytes for b in buffers]
        head = json.dumps({**header, "_sizes": sizes}).encode()
        parts: list[bytes | memoryview] = [self._PREFIX.pack(len(head), sum(sizes)), head, *buffers]
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        while views:
            written = os.writev(self._fd, views[:512])
            while views and written >= views[0].nbytes:
                written -= views[0].nbytes
                views.pop(0)
            if written:
                views[0] = views[0][written:]

    def poll(self, timeout_s: float | None) -> bool:
        return self._conn.poll(timeout_s)

    def _read_into(self, view: memoryview) -> None:
        pos = 0
        while pos < view.nbytes:
            n = os.readv(self._fd, [view[pos:]])
            if n == 0:
                raise EOFError("the other side closed the channel")
            pos += n

    def recv(self) -> tuple[dict[str, Any], list[memoryview]]:
        prefix = bytearray(self._PREFIX.size)
        self._read_into(memoryview(prefix))
        head_len, body_len = self._PREFIX.unpack(prefix)
        if head_len > 1 << 24 or body_len > self._max:
            raise FenceError("oversized frame on the fence channel")
        head = bytearray(head_len)
        self._read_into(memoryview(head))
        header = json.loads(head)
        sizes = header.pop("_sizes", None) if isinstance(header, dict) else None
        if (
            not isinstance(sizes, list)
            or len(sizes) > 4096
            or not all(type(n) is int and n >= 0 for n in sizes)
        ):
            raise FenceError("malformed frame on the fence channel")
        if sum(sizes) != body_len:
            raise FenceError("malformed frame on the fence channel")
        body = memoryview(bytearray(body_len))
        self._read_into(body)
        buffers, pos = [], 0
        for n in sizes:
            buffers.append(body[pos : pos + n])
            pos += n
        return header, buffers
