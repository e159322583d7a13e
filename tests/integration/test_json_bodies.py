"""What a user's curl sends: JSON bodies without a JSON content type on JSON routes; infer bodies
that are empty or malformed get an error that says so, and where."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.helpers import register
from tests.models import demo_onnx_bytes

FORM = {"Content-Type": "application/x-www-form-urlencoded"}  # what `curl -d` sends


async def test_curl_d_json_on_json_routes(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models", content=b'{"name": "demo"}', headers=FORM)
    assert r.status_code == 201, r.text
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    r = await client.put("/v1/models/demo/aliases/production", content=b'{"version": 1}', headers=FORM)
    assert r.status_code == 200, r.text
    assert (await client.get("/v1/models/demo")).json()["aliases"] == {"production": 1}
    plain = {"Content-Type": "text/plain"}
    r = await client.put("/v1/models/demo/aliases/staging", content=b'{"version": 1}', headers=plain)
    assert r.status_code == 200, r.text
    # not JSON at all: the error says it is about JSON, not "a valid dictionary"
    r = await client.put("/v1/models/demo/aliases/production", content=b"version=1", headers=FORM)
    assert r.status_code == 422 and "send it with Content-Type: application/json" in r.text, r.text
    bad = await client.put(
        "/v1/models/demo/aliases/production",
        content=b'{"version": }',
        headers={"Content-Type": "application/json"},
    )
    assert bad.status_code == 422 and "body is not valid JSON" in bad.text and "(char 12)" in bad.text, (
        bad.text
    )
    # form routes stay forms: an upload is multipart as before (register above)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "request body is empty"),
        (b'{"inputs": [}', "not valid JSON: unexpected character, expected a JSON value at line 1 column 13"),
        (b'{\n  "inputs": [1,]\n}', "trailing comma is not allowed at line 2 column 15 (char 16)"),
    ],
)
async def test_infer_json_errors_say_what_and_where(
    client: httpx.AsyncClient, body: bytes, expected: str
) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    r = await client.post("/v2/models/demo/infer", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert expected in r.json()["error"], r.json()
