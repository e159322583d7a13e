"""What a request may cost before it is authenticated, and per request (in-process, through the
ASGI interface: a body given as a generator is pulled by the app only as it reads)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine

import httpx
import orjson
import pytest
from onnx import TensorProto, helper

from service.app import create_app
from service.openai_errors import is_openai
from service.settings import Settings
from tests.integration.helpers import register

CHUNK = 64 << 10
BOUNDARY = "kilnboundary"
JSON_ROUTES = [
    ("POST", "/v1/keys"),
    ("POST", "/v1/tenants"),
    ("POST", "/v1/models"),
    ("POST", "/v1/fine_tuning/jobs"),
    ("PUT", "/v1/models/m/aliases/production"),
]
UPLOAD_ROUTES = ["/v1/models/m/versions", "/v1/files"]


class Body:
    """A request body streamed in chunks; counts what the app pulled."""

    def __init__(self, total: int, head: bytes = b"", chunk: int = CHUNK) -> None:
        self.total, self.head, self.chunk, self.pulled = total, head, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        if self.head:
            self.pulled += len(self.head)
            sent += len(self.head)
            yield self.head
        while sent < self.total:
            n = min(self.chunk, self.total - sent)
            self.pulled += n
            sent += n
            yield b" " * n


def _multipart_head() -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="format"\r\n\r\nonnx\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def _code(r: httpx.Response) -> object:
    """The error's code, in the shape of the route's family (service/openai_errors.py): OpenAI's
    on /v1/fine_tuning (where `unauthorized` reads `invalid_api_key`), {"error", "code"} elsewhere."""
    body = r.json()
    if is_openai(r.request.method, r.request.url.path):
        return body["error"]["code"]
    assert set(body) == {"error", "code"}, body
    return body["code"]


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
async def test_unauthenticated_body_is_refused_before_a_byte_is_read(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    for declared in (True, False):  # with a Content-Length, and chunked
        body = Body(400 << 20, head=b'{"name": "')
        headers = {"Authorization": "", "Content-Type": "application/json"}
        if declared:
            headers["Content-Length"] = str(body.total)
        r = await client.request(method, path, content=body, headers=headers)
        assert r.status_code == 401, r.text
        want = "invalid_api_key" if is_openai(method, path) else "unauthorized"
        assert _code(r) == want and r.headers["connection"] == "close"
        assert body.pulled <= len(body.head), body.pulled  # httpx may pull the first chunk itself


@pytest.mark.parametrize("path", UPLOAD_ROUTES)
async def test_unauthenticated_upload_is_never_spooled(client: httpx.AsyncClient, path: str) -> None:
    body = Body(1 << 30, head=_multipart_head())
    r = await client.post(path, content=body, headers={**MULTIPART, "Authorization": "Bearer kiln_nope"})
    assert r.status_code == 401, r.text
    assert body.pulled <= len(body.head)


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
async def test_json_body_over_the_management_limit_is_413(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    declared = Body(2 << 20)
    r = await client.request(method, path, content=declared, headers={"Content-Length": str(declared.total)})
    assert r.status_code == 413 and _code(r) == "payload_too_large", r.text
    assert declared.pulled <= CHUNK
    chunked = Body(400 << 20, head=b'{"name": "')
    r = await client.request(method, path, content=chunked, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert chunked.pulled <= (1 << 20) + 2 * CHUNK  # cut at the limit, not read on


@pytest.fixture
def small_uploads(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_upload_bytes": 2 << 20, "max_dataset_bytes": 1 << 20})


@pytest.fixture
async def small_client(small_uploads: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(small_uploads)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://kiln",
            headers={"Authorization": f"Bearer {small_uploads.bootstrap_admin_key}"},
            timeout=30,
        ) as c,
    ):
        yield c


@pytest.mark.parametrize("path", UPLOAD_ROUTES)
async def test_upload_over_its_limit_is_cut_while_streamed(
    small_client: httpx.AsyncClient, path: str
) -> None:
    assert (await small_client.post("/v1/models", json={"name": "m"})).status_code == 201
    body = Body(1 << 30, head=_multipart_head())
    r = await small_client.post(path, content=body, headers=MULTIPART)
    assert r.status_code == 413, r.text
    assert body.pulled <= (4 << 20)
    declared = Body(1 << 30, head=_multipart_head())
    headers = {**MULTIPART, "Content-Length": str(declared.total)}
    r = await small_client.post(path, content=declared, headers=headers)
    assert r.status_code == 413 and declared.pulled <= len(declared.head)


async def test_public_paths_and_bodyless_requests_pass(client: httpx.AsyncClient) -> None:
    r = await client.request("GET", "/v2/health/live", content=b"{}", headers={"Authorization": ""})
    assert r.status_code == 200
    r = await client.get("/v1/models", headers={"Authorization": ""})
    assert r.status_code == 401  # the route's own check, as before
    assert (await client.post("/v1/models", json={"name": "fine"})).status_code == 201


def _echo_bytes_onnx() -> bytes:
    """Identity on one BYTES input: s: BYTES[-1] -> t: BYTES[-1]."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "echo",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _binary_bytes_body(count: int) -> tuple[bytes, int]:
    size = 4 * count
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "s", "datatype": "BYTES", "shape": [count], "parameters": {"binary_data_size": size}}
            ]
        }
    )
    return head + b"\0\0\0\0" * count, len(head)


@pytest.fixture
async def echo(client: httpx.AsyncClient) -> httpx.AsyncClient:
    assert (await register(client, "echo", _echo_bytes_onnx(), "onnx")).status_code == 201
    return client


@pytest.mark.parametrize("bad", [[{}, 64], [None, 5], [{}, -1], [{}, 300_000_000], [[], 3]])
async def test_infer_bytes_non_strings_are_400_naming_the_input(
    echo: httpx.AsyncClient, bad: list[object]
) -> None:
    body = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": bad}]}
    r = await echo.post("/v2/models/echo/infer", json=body)
    assert r.status_code == 400, r.text
    assert "input 's'" in r.json()["error"] and "strings" in r.json()["error"]


async def _health_latencies_during(
    client: httpx.AsyncClient, request: Coroutine[object, object, httpx.Response]
) -> tuple[httpx.Response, list[float]]:
    """Run `request` while health is polled back to back; each latency is the time from the end
    of one health answer to the end of the next (so a stalled event loop shows, even while no
    health request is in flight)."""
    latencies: list[float] = []
    done = asyncio.Event()

    async def poll_health() -> None:
        last = time.perf_counter()
        while not done.is_set():
            assert (await client.get("/v2/health/live")).status_code == 200
            now = time.perf_counter()
            latencies.append(now - last)
            last = now
            await asyncio.sleep(0)
        latencies.append(time.perf_counter() - last)  # a stall just before the request ended

    poller = asyncio.create_task(poll_health())
    while len(latencies) < 5:  # polling runs before the request is sent
        await asyncio.sleep(0.001)
    try:
        response = await request
    finally:
        done.set()
        await poller
    return response, sorted(latencies)


def _p99(latencies: list[float]) -> float:
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]


@pytest.mark.serial
async def test_heavy_bytes_request_is_refused_before_decoding_and_others_keep_answering(
    echo: httpx.AsyncClient,
) -> None:
    """10 M empty strings in the binary extension (40 MB): refused by the element bound (413)
    from its shape alone; health, polled meanwhile, keeps answering."""
    body, n = _binary_bytes_body(10_000_000)
    headers = {"Inference-Header-Content-Length": str(n), "Content-Type": "application/octet-stream"}
    r, latencies = await _health_latencies_during(
        echo, echo.post("/v2/models/echo/infer", content=body, headers=headers)
    )
    assert r.status_code == 413 and "BYTES elements" in r.json()["error"], r.text
    print(
        f"health during a 10 M-string request: {len(latencies)} answers, p99 {_p99(latencies) * 1e3:.1f} ms"
    )
    assert latencies and _p99(latencies) < 0.3, latencies[-5:]


@pytest.mark.serial
async def test_large_body_is_decoded_off_the_event_loop(echo: httpx.AsyncClient) -> None:
    """1 M strings in JSON (within the element bound): decoded in a worker thread (then refused
    for an unknown second input, so nothing is enqueued); health keeps answering meanwhile."""
    count = 1 << 20
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "s", "datatype": "BYTES", "shape": [count], "data": ["ab"] * count},
                {"name": "nope", "datatype": "FP32", "shape": [1], "data": [1]},
            ]
        }
    )
    r, latencies = await _health_latencies_during(
        echo, echo.post("/v2/models/echo/infer", content=body, headers={"Content-Type": "application/json"})
    )
    assert r.status_code == 400 and "nope" in r.json()["error"], r.text
    print(f"health during a 1 M-string decode: {len(latencies)} answers, p99 {_p99(latencies) * 1e3:.1f} ms")
    assert len(latencies) >= 5 and _p99(latencies) < 0.3, latencies[-5:]
