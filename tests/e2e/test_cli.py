"""The `kiln` command line against a real gateway: keys made on the server, models pushed over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.e2e.harness import ROOT, Stack
from tests.models import SCALE_SIGNATURE, Scale, demo_onnx_bytes, demo_reference, torchscript_bytes

pytestmark = pytest.mark.e2e


def kiln(env: dict[str, str], *argv: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "service.cli.main", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_keys_create_and_models_push(stack: Stack, tmp_path) -> None:
    stack.start_gateway()
    stack.start_worker("worker-1")
    made = json.loads(kiln(stack.env, "keys", "create", "--scope", "manage", "--scope", "infer"))
    assert made["scopes"] == ["infer", "manage"] and made["key"].startswith("kiln_")
    onnx_file = tmp_path / "demo.onnx"
    onnx_file.write_bytes(demo_onnx_bytes())
    ts_file = tmp_path / "scale.pt"
    ts_file.write_bytes(torchscript_bytes(Scale()))
    env = {**stack.env, "KILN_URL": stack.url, "KILN_API_KEY": made["key"]}

    pushed = json.loads(kiln(env, "models", "push", "demo", str(onnx_file), "--format", "onnx"))
    assert pushed["version"] == 1 and pushed["format"] == "onnx"
    pushed = json.loads(
        kiln(
            env,
            "models",
            "push",
            "demo",
            str(onnx_file),
            "--format",
            "onnx",
            "--config",
            '{"max_batch_size": 4}',
        )
    )
    assert pushed["version"] == 2 and pushed["config"]["max_batch_size"] == 4
    pushed = json.loads(
        kiln(
            env,
            "models",
            "push",
            "scale",
            str(ts_file),
            "--format",
            "torchscript",
            "--signature",
            json.dumps(SCALE_SIGNATURE),
        )
    )
    assert pushed["version"] == 1

    x = [[0.5, -1.0, 2.0, 0.0]]
    r = httpx.post(
        f"{stack.url}/v2/models/demo/versions/1/infer",
        timeout=30,
        headers={"Authorization": f"Bearer {made['key']}"},
        json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x[0]}]},
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        r.json()["outputs"][0]["data"], demo_reference(np.array(x, dtype=np.float32))[0], atol=1e-5
    )
