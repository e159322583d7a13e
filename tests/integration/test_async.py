"""Asynchronous inference: Prefer: respond-async -> 202 + id + Location; GET the result later."""

from __future__ import annotations

import numpy as np
import orjson

from tests.conftest import WorkerThread, make_key
from tests.integration.helpers import infer_body, register
from tests.integration.test_reliability import _poll
from tests.models import demo_onnx_bytes, demo_reference
from workers.contract.redis_keys import RedisKeys

ASYNC = {"Prefer": "respond-async"}


async def test_respond_async_then_fetch(client, settings, redis_client) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    r = await client.post(
        "/v2/models/demo/infer", json=infer_body("x", x.tolist(), [1, 4], id="job-1"), headers=ASYNC
    )
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    assert r.headers["location"] == f"/v1/async/{rid}" and r.headers["preference-applied"] == "respond-async"
    pending = await client.get(r.headers["location"])  # no worker yet
    assert pending.status_code == 202 and pending.json()["status"] == "queued"
    ttl = redis_client.ttl(RedisKeys(settings.redis_prefix).async_result(rid))
    assert 0 < ttl <= settings.async_result_ttl_s

    w = WorkerThread(settings).start()
    try:

        async def done():  # type: ignore[no-untyped-def]
            resp = await client.get(f"/v1/async/{rid}")
            return resp if resp.status_code != 202 else None

        resp = await _poll(done, what="the async result")
    finally:
        w.stop()
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["id"] == "job-1" and body["model_name"] == "demo" and body["model_version"] == "1"
    np.testing.assert_allclose(
        np.array(body["outputs"][0]["data"]).reshape(1, 3), demo_reference(x), atol=1e-5
    )
    assert (await client.get(f"/v1/async/{rid}")).status_code == 200  # kept: fetch again

    other = make_key(settings, ["infer"], tenant="someone-else")
    r = await client.get(f"/v1/async/{rid}", headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 404  # another tenant's result does not exist for them
    assert (await client.get("/v1/async/" + "0" * 32)).status_code == 404
    assert (await client.get("/v1/async/..%2f..%2fetc")).status_code == 404


async def test_async_binary_outputs_and_errors(client, settings, worker: WorkerThread) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    x = np.ones((2, 4), dtype=np.float32)
    body = infer_body("x", x.tolist(), [2, 4], parameters={"binary_data_output": True})
    r = await client.post("/v2/models/demo/infer", json=body, headers=ASYNC)
    assert r.status_code == 202

    async def done():  # type: ignore[no-untyped-def]
        resp = await client.get(r.headers["location"])
        return resp if resp.status_code != 202 else None

    resp = await _poll(done, what="the async result")
    n = int(resp.headers["inference-header-content-length"])
    head = orjson.loads(resp.content[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 2 * 3 * 4
    y = np.frombuffer(resp.content[n:], dtype="<f4").reshape(2, 3)
    np.testing.assert_allclose(y, demo_reference(x), atol=1e-5)

    bad = await client.post("/v2/models/demo/infer", json=infer_body("x", [1, 2], [1, 2]), headers=ASYNC)
    assert bad.status_code == 400  # validated before anything is accepted
