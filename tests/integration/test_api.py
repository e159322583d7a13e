"""The foundation over HTTP on real PostgreSQL and Redis: register, infer, aliases, errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from model_store.db import ModelVersionRow
from tests.conftest import WorkerThread, make_key
from tests.integration.helpers import infer_body, register
from tests.models import (
    SCALE_SIGNATURE,
    Scale,
    demo_onnx_bytes,
    demo_reference,
    malicious_pickle,
    scale_reference,
    torch_save_checkpoint,
    torchscript_bytes,
)


async def test_register_onnx_and_infer(client, worker: WorkerThread) -> None:
    r = await register(client, "demo", demo_onnx_bytes(), "onnx", config={"max_batch_size": 16})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["version"] == 1 and len(body["sha256"]) == 64
    assert body["signature"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]

    x = np.array([[1, 2, 3, 4], [-1, 0.5, 0, 2]], dtype=np.float32)
    r = await client.post(
        "/v2/models/demo/infer", json=infer_body("x", x.reshape(-1).tolist(), [2, 4], id="req-1")
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "demo" and out["model_version"] == "1" and out["id"] == "req-1"
    (y,) = out["outputs"]
    assert y["name"] == "y" and y["datatype"] == "FP32" and y["shape"] == [2, 3]
    np.testing.assert_allclose(np.array(y["data"]).reshape(2, 3), demo_reference(x), atol=1e-5)


async def test_register_torchscript_and_infer(client, worker: WorkerThread) -> None:
    r = await register(client, "scale", torchscript_bytes(Scale()), "torchscript", signature=SCALE_SIGNATURE)
    assert r.status_code == 201, r.text
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    r = await client.post("/v2/models/scale/versions/1/infer", json=infer_body("x", x.tolist(), [3, 4]))
    assert r.status_code == 200, r.text
    (y,) = r.json()["outputs"]
    np.testing.assert_allclose(np.array(y["data"]).reshape(3, 2), scale_reference(x), atol=1e-5)


async def test_versions_and_aliases_resolve(client, worker: WorkerThread) -> None:
    for _ in range(2):
        assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    r = await client.get("/v1/models/demo")
    assert r.json()["versions"] == [1, 2]
    # without production: the newest
    assert (await client.get("/v2/models/demo")).json()["versions"] == ["1", "2"]
    body = infer_body("x", [1, 2, 3, 4], [1, 4])
    assert (await client.post("/v2/models/demo/infer", json=body)).json()["model_version"] == "2"
    # production wins over newest
    r = await client.put("/v1/models/demo/aliases/production", json={"version": 1})
    assert r.status_code == 200, r.text
    assert (await client.post("/v2/models/demo/infer", json=body)).json()["model_version"] == "1"
    r = await client.put("/v1/models/demo/aliases/staging", json={"version": 2})
    assert r.status_code == 200
    r = await client.post("/v2/models/demo/versions/staging/infer", json=body)
    assert r.json()["model_version"] == "2"
    assert (await client.get("/v1/models/demo/versions/staging")).json()["version"] == 2
    assert (await client.get("/v1/models/demo")).json()["aliases"] == {"production": 1, "staging": 2}
    r = await client.put("/v1/models/demo/aliases/staging", json={"version": 9})
    assert r.status_code == 404


async def test_unknown_model_and_version_are_404(client) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    body = infer_body("x", [1, 2, 3, 4], [1, 4])
    for path in (
        "/v2/models/nope/infer",
        "/v2/models/demo/versions/7/infer",
        "/v2/models/demo/versions/canary/infer",
    ):
        r = await client.post(path, json=body)
        assert r.status_code == 404, (path, r.text)
        assert "error" in r.json()
    assert (await client.get("/v1/models/nope")).status_code == 404


@pytest.mark.parametrize("name", ["..", "a..b", "UPPER", "-x", "a" * 64, "a/b", "%2e%2e"])
async def test_strict_names(client, name: str) -> None:
    r = await client.post("/v1/models", json={"name": name})
    assert r.status_code in (400, 422)
    r = await client.post(f"/v2/models/{name}/infer", json=infer_body("x", [1], [1, 1]))
    assert r.status_code in (400, 404, 405)


async def test_auth_errors(client, settings) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    body = infer_body("x", [1, 2, 3, 4], [1, 4])
    r = await client.post("/v2/models/demo/infer", json=body, headers={"Authorization": ""})
    assert r.status_code == 401
    r = await client.post(
        "/v2/models/demo/infer", json=body, headers={"Authorization": "Bearer kiln_nope_nope"}
    )
    assert r.status_code == 401
    infer_key = make_key(settings, ["infer"])
    as_infer = {"Authorization": f"Bearer {infer_key}"}
    for method, path, kwargs in (
        ("POST", "/v1/models", {"json": {"name": "x"}}),
        ("PUT", "/v1/models/demo/aliases/production", {"json": {"version": 1}}),
    ):
        r = await client.request(method, path, headers=as_infer, **kwargs)
        assert r.status_code == 403, (path, r.text)
    assert (await client.get("/v1/models/demo")).json()["aliases"] == {}
    # an inference key lists the models it may call (OpenAI's SDKs list with it)
    assert (await client.get("/v1/models", headers=as_infer)).status_code == 200
    manage_key = make_key(settings, ["manage"])
    r = await client.post(
        "/v2/models/demo/infer", json=body, headers={"Authorization": f"Bearer {manage_key}"}
    )
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ([{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}], "'x'"),
        ([{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}], "'x'"),
        ([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}], "'x'"),
        ([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["a", "b", "c", "d"]}], "'x'"),
        ([{"name": "q", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "'q'"),
        ([], "inputs"),
    ],
)
async def test_bad_input_is_400_and_nothing_enqueued(
    client, settings, redis_client, inputs, fragment
) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    stream = f"{settings.redis_prefix}:req:1"
    before = redis_client.xlen(stream)
    r = await client.post("/v2/models/demo/infer", json={"inputs": inputs})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]
    assert redis_client.xlen(stream) == before


async def test_body_limits(client, settings) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    deep = "[" * 5000 + "]" * 5000
    r = await client.post("/v2/models/demo/infer", content=deep.encode())
    assert r.status_code == 400
    big = b"{" + b" " * (settings.max_body_bytes + 1) + b"}"
    r = await client.post("/v2/models/demo/infer", content=big)
    assert r.status_code == 413


async def test_pickle_upload_refused_and_never_loaded(client, tmp_path) -> None:
    marker = tmp_path / "pwned"
    for fmt in ("torchscript", "onnx"):
        r = await register(client, "evil", malicious_pickle(marker), fmt, signature=SCALE_SIGNATURE)
        assert r.status_code == 422, r.text
        assert "pickle" in r.json()["error"]
    r = await register(client, "evil", torch_save_checkpoint(), "torchscript", signature=SCALE_SIGNATURE)
    assert r.status_code == 422
    assert not marker.exists()
    assert (await client.get("/v1/models/evil")).json()["versions"] == []


async def test_torchscript_signature_is_checked_at_upload(client) -> None:
    wrong = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    }
    r = await register(client, "scale", torchscript_bytes(Scale()), "torchscript", signature=wrong)
    assert r.status_code == 422
    r = await register(client, "scale", torchscript_bytes(Scale()), "torchscript")
    assert r.status_code == 422 and "signature" in r.json()["error"]


async def test_tampered_artifact_is_refused_at_load(client, worker: WorkerThread, registry, settings) -> None:
    r = await register(client, "demo", demo_onnx_bytes(), "onnx")
    sha = r.json()["sha256"]
    path = registry.blobs.path_for(sha)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"\0")
    r = await client.post("/v2/models/demo/infer", json=infer_body("x", [1, 2, 3, 4], [1, 4]))
    assert r.status_code == 503
    assert "sha256" in r.json()["error"]
    assert "/" not in r.json()["error"].replace("sha256", "")
    with registry.sessions() as s:
        assert s.get(ModelVersionRow, 1).sha256 == sha


async def test_concurrent_requests_are_batched(client, worker: WorkerThread) -> None:
    r = await register(
        client, "demo", demo_onnx_bytes(), "onnx", config={"max_batch_size": 32, "max_queue_delay_ms": 20}
    )
    assert r.status_code == 201
    xs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)

    async def one(i: int) -> list[float]:
        r = await client.post("/v2/models/demo/infer", json=infer_body("x", xs[i].tolist(), [1, 4]))
        assert r.status_code == 200, r.text
        return r.json()["outputs"][0]["data"]

    results = await asyncio.gather(*(one(i) for i in range(64)))
    np.testing.assert_allclose(np.array(results), demo_reference(xs), atol=1e-5)
    items = worker.sample("kiln_inference_count_total")
    batches = worker.sample("kiln_inference_exec_count_total")
    assert items == 64
    assert items / batches > 1, (items, batches)
