"""A model that never returns, with real gateway and worker processes: its request fails at its
deadline (504), its process is killed and its version unloaded (not ready, the reason in the
repository index, loads refused for a back-off), while another model on the same worker keeps
answering within its own deadline and the worker stays ready."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from model_store.fence import fence_available
from tests.e2e.conftest import AUTH, poll
from tests.fence_models import HangsOn
from tests.models import TIMES3_SIGNATURE, demo_onnx_bytes, demo_reference, torchscript_bytes

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not fence_available(), reason="Landlock is not available on this kernel"),
]
DEADLINE_US = 1_500_000


def _register(c: httpx.Client, name: str, data: bytes, fmt: str, signature: dict | None = None) -> None:  # type: ignore[type-arg]
    assert c.post("/v1/models", json={"name": name}).status_code == 201
    form = {"format": fmt, "config": json.dumps({"max_batch_size": 4, "max_queue_delay_ms": 2})}
    if signature is not None:
        form["signature"] = json.dumps(signature)
    r = c.post(f"/v1/models/{name}/versions", data=form, files={"file": ("m.bin", data)})
    assert r.status_code == 201, r.text


def _infer(
    c: httpx.Client, name: str, x: np.ndarray, deadline_us: int = DEADLINE_US
) -> tuple[httpx.Response, float]:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}],
        "parameters": {"timeout": deadline_us},
    }
    started = time.monotonic()
    r = c.post(f"/v2/models/{name}/infer", json=body)
    return r, time.monotonic() - started


def test_a_hung_model_is_killed_and_unloaded_while_others_keep_answering(make_stack) -> None:
    stack = make_stack(KILN_HUNG_BACKOFF_S="600")
    stack.start_gateway()
    stack.start_worker("w1")
    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=30) as c:
        _register(c, "hang", torchscript_bytes(HangsOn()), "torchscript", TIMES3_SIGNATURE)
        _register(c, "demo", demo_onnx_bytes(), "onnx")
        ok = np.ones((1, 4), np.float32)
        # the first requests load the models (a fresh worker's fork server imports the runtimes)
        assert _infer(c, "demo", ok, 60_000_000)[0].status_code == 200
        assert _infer(c, "hang", np.ones((1, 2), np.float32), 60_000_000)[0].status_code == 200

        with ThreadPoolExecutor(2) as pool:
            hung = pool.submit(_infer, c, "hang", np.array([[-7.0, 1.0]], np.float32))
            others: list[tuple[httpx.Response, float]] = []
            while not hung.done():  # the other model answers all the while the hung one runs
                others.append(_infer(c, "demo", ok))
            r, took = hung.result()
        assert r.status_code == 504 and r.json()["code"] == "deadline_exceeded", r.text
        assert took < DEADLINE_US / 1e6 + 2
        assert len(others) >= 5
        for resp, seconds in others:
            assert resp.status_code == 200, resp.text
            assert seconds < DEADLINE_US / 1e6, seconds
            y = np.array(resp.json()["outputs"][0]["data"], np.float32).reshape(1, 3)
            np.testing.assert_allclose(y, demo_reference(ok), atol=1e-5)

        poll(lambda: c.get("/v2/models/hang/ready").status_code != 200, what="the hung model not ready")
        poll(lambda: c.get("/v2/models/hang/versions/1/ready").status_code != 200, what="its version")
        (entry,) = [e for e in c.post("/v2/repository/index").json() if e["name"] == "hang"]
        assert entry["state"] == "UNAVAILABLE" and "did not answer" in entry["reason"], entry
        r, _ = _infer(c, "hang", np.ones((1, 2), np.float32))  # refused during the back-off
        assert r.status_code == 503 and "did not answer" in r.text, r.text

        assert c.get("/v2/models/demo/ready").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        assert _infer(c, "demo", ok)[0].status_code == 200
    stack.check_alive()
