"""Stock `tritonclient[http]` against the gateway over real HTTP: every OIP datatype, JSON and
binary tensors, sync and async infer (gevent and asyncio clients), requested outputs, request id,
server/model metadata, health and model readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient._plugin import InferenceServerClientPlugin
from tritonclient.utils import InferenceServerException

from service.settings import Settings
from tests.conftest import ADMIN_KEY, WorkerThread
from tests.integration.live import LiveServer
from tests.serving_models import ALL_DATATYPES, all_types_sample, identity_all_types_bytes

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
MODEL = "alltypes"


class BearerKey(InferenceServerClientPlugin):
    """tritonclient's own plugin hook adds the API key to every request."""

    def __call__(self, request) -> None:  # type: ignore[no-untyped-def]
        request.headers.update(AUTH)


def register_sync(url: str, name: str, data: bytes, fmt: str, config: dict | None = None) -> None:
    import json

    with httpx.Client(base_url=f"http://{url}", headers=AUTH, timeout=30) as c:
        r = c.post("/v1/models", json={"name": name})
        assert r.status_code in (201, 409), r.text
        form = {"format": fmt, **({"config": json.dumps(config)} if config else {})}
        r = c.post(f"/v1/models/{name}/versions", data=form, files={"file": ("m.bin", data)})
        assert r.status_code == 201, r.text


@pytest.fixture
def live(settings: Settings, worker: WorkerThread) -> Iterator[LiveServer]:
    server = LiveServer(settings).start()
    register_sync(server.url, MODEL, identity_all_types_bytes(), "onnx", {"max_batch_size": 8})
    yield server
    server.stop()


@pytest.fixture
def triton(live: LiveServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(live.url, concurrency=4, network_timeout=60)
    client.register_plugin(BearerKey())
    yield client
    client.close()


def _inputs(sample: dict[str, np.ndarray], binary: bool) -> list[httpclient.InferInput]:
    inputs = []
    for dt, arr in sample.items():
        inp = httpclient.InferInput(f"in_{dt}", list(arr.shape), dt)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return inputs


def _check(
    result: httpclient.InferResult, sample: dict[str, np.ndarray], only: tuple[str, ...] = ALL_DATATYPES
) -> None:
    for dt in only:
        got = result.as_numpy(f"out_{dt}")
        assert got is not None, dt
        want = sample[dt]
        assert got.shape == want.shape, dt
        if dt == "BYTES":
            assert [bytes(x) if isinstance(x, bytes) else str(x).encode() for x in got.reshape(-1)] == list(
                want.reshape(-1)
            ), dt
        else:
            assert got.dtype == want.dtype, dt
            np.testing.assert_array_equal(got, want, err_msg=dt)


@pytest.mark.parametrize("in_binary", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("out_binary", [False, True], ids=["json-out", "binary-out"])
def test_every_datatype_sync(triton, in_binary: bool, out_binary: bool) -> None:
    sample = all_types_sample(2, seed=int(in_binary) + 2 * int(out_binary))
    outputs = [httpclient.InferRequestedOutput(f"out_{dt}", binary_data=out_binary) for dt in ALL_DATATYPES]
    result = triton.infer(MODEL, _inputs(sample, in_binary), outputs=outputs, request_id="rq-7")
    assert result.get_response()["id"] == "rq-7"
    assert result.get_response()["model_name"] == MODEL
    _check(result, sample)
    if not out_binary:
        assert "data" in result.get_output("out_FP32")


def test_default_outputs_come_back_binary(triton) -> None:
    """With no outputs named, tritonclient asks for binary_data_output (all outputs binary)."""
    sample = all_types_sample(3, seed=5)
    result = triton.infer(MODEL, _inputs(sample, True))
    out = result.get_output("out_INT64")
    assert "data" not in out and out["parameters"]["binary_data_size"] == 3 * 3 * 8
    _check(result, sample)


def test_requested_outputs_subset_and_mixed(triton) -> None:
    sample = all_types_sample(1, seed=9)
    outputs = [
        httpclient.InferRequestedOutput("out_BYTES", binary_data=True),
        httpclient.InferRequestedOutput("out_FP16", binary_data=False),
    ]
    result = triton.infer(MODEL, _inputs(sample, True), outputs=outputs)
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["out_BYTES", "out_FP16"]
    assert "data" in result.get_output("out_FP16")
    assert "data" not in result.get_output("out_BYTES")
    _check(result, sample, only=("BYTES", "FP16"))


def test_async_infer_gevent(triton) -> None:
    samples = [all_types_sample(1 + i % 3, seed=i) for i in range(8)]
    handles = [
        triton.async_infer(MODEL, _inputs(s, i % 2 == 0), request_id=f"a{i}") for i, s in enumerate(samples)
    ]
    for i, (handle, sample) in enumerate(zip(handles, samples, strict=True)):
        result = handle.get_result(timeout=60)
        assert result.get_response()["id"] == f"a{i}"
        _check(result, sample)


def test_async_infer_asyncio(live: LiveServer) -> None:
    async def main() -> None:
        client = aioclient.InferenceServerClient(live.url)
        client.register_plugin(BearerKey())
        try:
            samples = [all_types_sample(2, seed=20 + i) for i in range(6)]
            results = await asyncio.gather(
                *[
                    client.infer(MODEL, _aio_inputs(s, i % 2 == 1), request_id=f"x{i}")
                    for i, s in enumerate(samples)
                ]
            )
            for i, (result, sample) in enumerate(zip(results, samples, strict=True)):
                assert result.get_response()["id"] == f"x{i}"
                _check(result, sample)  # type: ignore[arg-type]
            assert await client.is_server_live() and await client.is_model_ready(MODEL)
        finally:
            await client.close()

    asyncio.run(main())


def _aio_inputs(sample: dict[str, np.ndarray], binary: bool) -> list[aioclient.InferInput]:
    inputs = []
    for dt, arr in sample.items():
        inp = aioclient.InferInput(f"in_{dt}", list(arr.shape), dt)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return inputs


def test_health_metadata_and_readiness(triton) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "modelkiln" and "binary_tensor_data" in meta["extensions"]
    triton.load_model(MODEL)
    assert triton.is_model_ready(MODEL)
    assert triton.is_model_ready(MODEL, "1")
    assert not triton.is_model_ready(MODEL, "9")
    assert not triton.is_model_ready("nope")
    md = triton.get_model_metadata(MODEL)
    assert md["name"] == MODEL and md["versions"] == ["1"] and md["platform"] == "onnxruntime_onnx"
    assert {t["name"]: t["datatype"] for t in md["inputs"]} == {f"in_{dt}": dt for dt in ALL_DATATYPES}
    assert md["outputs"][0] == {"name": "out_BOOL", "datatype": "BOOL", "shape": [-1, 3]}
    assert triton.get_model_metadata(MODEL, "1")["name"] == MODEL
    cfg = triton.get_model_config(MODEL)
    assert cfg["max_batch_size"] == 8 and cfg["input"][0] == {
        "name": "in_BOOL",
        "data_type": "TYPE_BOOL",
        "dims": [3],
    }
    assert (
        cfg["output"][-1]["data_type"] == "TYPE_STRING"
        and triton.get_model_config(MODEL, "1")["name"] == MODEL
    )
    with pytest.raises(InferenceServerException) as err:
        triton.get_model_metadata("nope")
    assert err.value.status() == "404"


def test_errors_reach_the_client_as_oip_errors(triton) -> None:
    sample = all_types_sample(1)
    inputs = _inputs(sample, True)[:-1]  # BYTES input missing
    with pytest.raises(InferenceServerException) as err:
        triton.infer(MODEL, inputs)
    assert err.value.status() == "400" and "missing input" in err.value.message()
    bad = httpclient.InferInput("in_BYTES", [1, 3], "BYTES")
    bad.set_data_from_numpy(np.array([[b"\xff", b"a", b"b"]], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException) as err:
        triton.infer(MODEL, [*inputs, bad])
    assert err.value.status() == "400" and "UTF-8" in err.value.message()


def test_repository_index_load_unload(triton, live: LiveServer) -> None:
    register_sync(live.url, "second", identity_all_types_bytes(), "onnx")
    index = {(m["name"], m["version"]): m for m in triton.get_model_repository_index()}
    assert set(index) == {(MODEL, "1"), ("second", "1")}
    assert index[(MODEL, "1")]["state"] == "UNAVAILABLE"  # nothing loaded yet (lazy)
    assert not triton.is_model_ready(MODEL)

    triton.load_model(MODEL)  # returns once a worker has it loaded and warmed up
    assert triton.is_model_ready(MODEL) and triton.is_model_ready(MODEL, "1")
    assert not triton.is_model_ready("second")  # readiness is per version
    states = {m["name"]: m["state"] for m in triton.get_model_repository_index()}
    assert states == {MODEL: "READY", "second": "UNAVAILABLE"}
    triton.load_model("second")
    assert triton.is_model_ready("second")  # several versions live at once

    triton.unload_model(MODEL)
    assert not triton.is_model_ready(MODEL) and triton.is_model_ready("second")
    sample = all_types_sample(1)
    with pytest.raises(InferenceServerException) as err:
        triton.infer(MODEL, _inputs(sample, True))
    assert err.value.status() == "503" and "unloaded" in err.value.message()
    reasons = {m["name"]: m["reason"] for m in triton.get_model_repository_index()}
    assert reasons[MODEL] == "unloaded"

    triton.load_model(MODEL)
    _check(triton.infer(MODEL, _inputs(sample, True)), sample)
    with pytest.raises(InferenceServerException) as err:
        triton.load_model("nope")
    assert err.value.status() == "404"
    with pytest.raises(InferenceServerException) as err:
        triton.load_model(MODEL, config='{"backend": "python"}')
    assert err.value.status() == "400"
