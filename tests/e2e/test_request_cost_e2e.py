"""Unauthenticated huge bodies on real processes: the gateway answers 401 (or 413 past a route's
limit) while the client is still sending, without reading the body on, and its memory stays flat.

The client is a raw socket that streams the body from a generator (with a declared
Content-Length, or chunked) and looks for the answer after every chunk, as a client that sends
hundreds of megabytes would; the gateway's RSS is sampled (psutil) while it sends."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

from tests.e2e.conftest import AUTH
from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e

CHUNK = 256 << 10
BOUNDARY = "kilnboundary"
MULTIPART_HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="format"\r\n\r\nonnx\r\n'
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n'
    "Content-Type: application/octet-stream\r\n\r\n"
).encode()


@dataclass
class Outcome:
    status: int
    sent: int  # body bytes the client got out before the answer came
    seconds: float
    rss_growth: int  # the gateway's largest RSS while sending, over its RSS before


def _body(total: int, head: bytes) -> Iterator[bytes]:
    yield head
    sent = len(head)
    filler = b"1" * CHUNK
    while sent < total:
        n = min(CHUNK, total - sent)
        sent += n
        yield filler[:n]


def _rss(proc: psutil.Process) -> int:
    procs = [proc, *proc.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running())


def _status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        part = sock.recv(4096)
        if not part:
            break
        data += part
    return int(data.split(b" ", 2)[1])


def send_streamed(stack: Stack, pid: int, path: str, total: int, *, chunked: bool, **opts: object) -> Outcome:
    """POST `total` body bytes to `path`, streamed; stop at the first byte of an answer."""
    headers = {"Host": "kiln", "Content-Type": str(opts.get("content_type", "application/json"))}
    headers.update(opts.get("headers", {}))  # type: ignore[arg-type]
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(total)
    gateway = psutil.Process(pid)
    before = peak = _rss(gateway)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = socket.create_connection(("127.0.0.1", stack.gateway_port), timeout=30)
    start, sent = time.monotonic(), 0
    try:
        sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode())
        for i, chunk in enumerate(_body(total, bytes(opts.get("body_head", b"{")))):  # type: ignore[call-overload]
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            except OSError:  # the gateway closed the connection after answering
                break
            sent += len(chunk)
            if i % 16 == 0:
                peak = max(peak, _rss(gateway))
            assert time.monotonic() - start < 60, "still sending after 60 s: nobody answered"
        status = _status(sock)
    finally:
        sock.close()
    peak = max(peak, _rss(gateway))
    return Outcome(status, sent, time.monotonic() - start, peak - before)


@pytest.fixture
def gateway(stack: Stack) -> tuple[Stack, int]:
    proc = stack.start_gateway()
    return stack, proc.popen.pid


MIB = 1 << 20
JSON_ROUTES = ["/v1/keys", "/v1/tenants", "/v1/models", "/v1/fine_tuning/jobs", "/v2/models/demo/infer"]
UPLOAD_ROUTES = ["/v1/models/m/versions", "/v1/files"]


def test_unauthenticated_400_mb_json_is_refused_while_sent(gateway: tuple[Stack, int]) -> None:
    stack, pid = gateway
    for path in JSON_ROUTES:
        for chunked in (False, True):
            out = send_streamed(stack, pid, path, 400 * MIB, chunked=chunked)
            case = (path, "chunked" if chunked else "declared", out)
            assert out.status == 401, case
            assert out.sent < 64 * MIB and out.seconds < 20, case  # answered long before the body was sent
            assert out.rss_growth < 64 * MIB, case  # before: +800 MB each
    stack.check_alive()


def test_unauthenticated_2_gib_upload_is_never_spooled(gateway: tuple[Stack, int]) -> None:
    stack, pid = gateway
    for path in UPLOAD_ROUTES:
        for chunked in (False, True):
            out = send_streamed(
                stack,
                pid,
                path,
                2 << 30,
                chunked=chunked,
                content_type=f"multipart/form-data; boundary={BOUNDARY}",
                body_head=MULTIPART_HEAD,
                headers={"Authorization": "Bearer kiln_not_a_key"},
            )
            case = (path, "chunked" if chunked else "declared", out)
            assert out.status == 401, case
            assert out.sent < 64 * MIB and out.rss_growth < 64 * MIB, case


def test_authenticated_json_over_the_limit_is_413_at_the_limit(gateway: tuple[Stack, int]) -> None:
    stack, pid = gateway
    for chunked in (False, True):
        out = send_streamed(stack, pid, "/v1/models", 400 * MIB, chunked=chunked, headers=AUTH)
        assert out.status == 413, (chunked, out)
        assert out.sent < 64 * MIB and out.rss_growth < 64 * MIB, (chunked, out)
