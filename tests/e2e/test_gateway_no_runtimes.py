"""The gateway never imports torch, transformers or onnxruntime (issue 11), on the real stack: the
gateway runs as a real process (tests/e2e/gateway_probe.py: `kiln gateway` that reports, at exit,
every module it imported and every library it mapped), with a real worker.

- Where the runtimes cannot be imported at all (as on a gateway-only install), KILN_CHECKS=auto
  sends the upload and fine-tune model checks to the worker: an ONNX and a TorchScript upload,
  inference on both, a fine-tune job created (its model check on the worker).
- With the runtimes installed and KILN_CHECKS=worker, the gateway still loads none of them, and a
  hostile TorchScript upload is refused through the worker, leaving no blob behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from model_store.fence import fence_available
from service.cli.demo import demo_onnx_bytes, demo_reference
from tests.e2e.conftest import AUTH
from tests.e2e.gateway_probe import mapped_libraries
from tests.e2e.harness import Proc, Stack
from tests.fence_models import reads_file
from tests.ft_data import MLP_SIGNATURE, jsonl, mlp_bytes, rows
from tests.models import FailsOnNegative, torchscript_bytes

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not fence_available(), reason="Landlock is not available on this kernel"),
]
PROBE = "tests.e2e.gateway_probe"
RUNTIMES = ("torch", "transformers", "onnxruntime", "onnx", "tokenizers", "safetensors")
LIBRARIES = ("libtorch", "libc10", "onnxruntime", "libtokenizers")
SIG = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
}


def _push(
    c: httpx.Client, name: str, data: bytes, fmt: str, sig: dict[str, Any] | None = None
) -> httpx.Response:
    assert c.post("/v1/models", json={"name": name}).status_code == 201
    form = {"format": fmt, **({"signature": json.dumps(sig)} if sig else {})}
    return c.post(f"/v1/models/{name}/versions", data=form, files={"file": ("m.bin", data)})


def _infer(c: httpx.Client, name: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = c.post(f"/v2/models/{name}/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def _stop_and_check(stack: Stack, gateway: Proc, report_path: Path, live: list[str]) -> None:
    """Stop the gateway (its probe writes the report at exit) and check what it loaded."""
    pid = gateway.popen.pid
    assert gateway.terminate() == 0, gateway.log_path.read_text()[-4000:]
    report = json.loads(report_path.read_text())
    assert report["pid"] == pid
    loaded = sorted({m.split(".")[0] for m in report["modules"]} & set(RUNTIMES))
    assert loaded == [], loaded
    assert "service.app" in report["modules"] and "uvicorn" in report["modules"]  # it did serve
    for lib in (*live, *report["libraries"]):
        assert not any(name in lib.rsplit("/", 1)[-1] for name in LIBRARIES), lib
    print(
        f"gateway {pid}: {len(report['modules'])} modules, {len(report['libraries'])} libraries, no runtime"
    )


def test_a_gateway_without_the_runtimes_checks_serves_and_queues_finetunes_through_a_worker(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    report = tmp_path / "gateway-probe.json"
    stack = make_stack(
        KILN_CHECKS="auto", GATEWAY_PROBE_OUT=str(report), GATEWAY_PROBE_BLOCK=",".join(RUNTIMES)
    )
    gateway = stack.start_gateway(module=PROBE)
    stack.start_worker("worker")
    x = np.array([[1, 2, 3, 4], [0.5, -1, 0, 2]], dtype=np.float32)
    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=90) as c:
        assert (r := _push(c, "demo", demo_onnx_bytes(), "onnx")).status_code == 201, r.text
        ts = _push(c, "triple", torchscript_bytes(FailsOnNegative()), "torchscript", SIG)
        assert ts.status_code == 201, ts.text
        np.testing.assert_allclose(_infer(c, "demo", x), demo_reference(x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_infer(c, "triple", x), x * 3)
        assert (r := _push(c, "clf", mlp_bytes(), "torchscript", MLP_SIGNATURE)).status_code == 201, r.text
        files = [
            c.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": (n, jsonl(*rows(k, s)))})
            for n, k, s in (("train.jsonl", 120, 1), ("valid.jsonl", 40, 2))
        ]
        assert all(f.status_code == 201 for f in files), [f.text for f in files]
        job = {
            "model": "clf",
            "training_file": files[0].json()["id"],
            "validation_file": files[1].json()["id"],
            "hyperparameters": {"epochs": 1, "freeze": ["net.0"]},  # the model check must build it
        }
        dry = c.post("/v1/fine_tuning/jobs?dry_run=true", json=job)
        assert dry.status_code == 200, dry.text
        assert 0 < dry.json()["estimate"]["trainable_parameters"] < dry.json()["estimate"]["total_parameters"]
        created = c.post("/v1/fine_tuning/jobs", json=job)
        assert created.status_code == 200 and created.json()["status"] == "queued", created.text
        live = mapped_libraries(gateway.popen.pid)
    worker_log = (stack.log_dir / "worker.log").read_text()
    assert "(upload): passed" in worker_log and "(finetune): passed" in worker_log  # the worker ran them
    _stop_and_check(stack, gateway, report, live)


def test_with_checks_on_workers_a_hostile_upload_is_refused_and_leaves_no_blob(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    report = tmp_path / "gateway-probe.json"
    stack = make_stack(KILN_CHECKS="worker", GATEWAY_PROBE_OUT=str(report))
    gateway = stack.start_gateway(module=PROBE)
    stack.start_worker("worker")
    blobs = Path(stack.env["KILN_DATA_DIR"]) / "blobs"
    secret = tmp_path / "planted.key"
    secret.write_bytes(b"kiln_planted_secret_" + b"z" * 44)
    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=90) as c:
        assert (r := _push(c, "demo", demo_onnx_bytes(), "onnx")).status_code == 201, r.text
        stored = sorted(blobs.rglob("*"))
        r = _push(c, "reader", reads_file(str(secret), 64), "torchscript", SIG)
        assert r.status_code == 422, r.text
        assert "planted" not in r.text
        assert c.get("/v1/models/reader").json()["versions"] == []
        assert sorted(blobs.rglob("*")) == stored  # no blob, nothing left pending
        live = mapped_libraries(gateway.popen.pid)
    assert "(upload): refused" in (stack.log_dir / "worker.log").read_text()
    _stop_and_check(stack, gateway, report, live)
