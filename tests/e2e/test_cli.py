"""The `kiln` command line against a real gateway: keys made on the server, models pushed over HTTP,
lists as tables, and every failure one line on stderr with a non-zero exit (never a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from tests.conftest import ADMIN_KEY
from tests.e2e.harness import ROOT, Stack, free_port
from tests.ft_data import MLP_SIGNATURE, jsonl, mlp_bytes, rows
from tests.models import SCALE_SIGNATURE, Scale, demo_onnx_bytes, demo_reference, torchscript_bytes

pytestmark = pytest.mark.e2e


def run(
    env: dict[str, str], *argv: str, module: str = "service.cli.main"
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=ROOT,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    for text in (out.stdout, out.stderr):
        assert "Traceback" not in text and "HTTP Request:" not in text, text[-2000:]
    return out


def kiln(env: dict[str, str], *argv: str) -> str:
    out = run(env, *argv)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def fails(env: dict[str, str], *argv: str) -> str:
    """The one line a failing command prints on stderr (and it exits non-zero, prints no stdout)."""
    out = run(env, *argv)
    assert out.returncode != 0 and out.stdout == "", (out.returncode, out.stdout)
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: "), out.stderr
    return lines[0]


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

    # aliases: set, roll back to the version before, and the list shows where they point
    assert json.loads(kiln(env, "models", "alias", "demo", "production", "2"))["version"] == 2
    assert json.loads(kiln(env, "models", "rollback", "demo", "production"))["version"] == 1
    assert "oldest" in fails(env, "models", "rollback", "demo", "production")
    listed = kiln(env, "models", "list")
    assert "demo" in listed and "scale" in listed and "production=1" in listed
    assert json.loads(kiln(env, "models", "get", "demo", "production"))["version"] == 1

    # usage: the inference above is counted (recorded once the reply is sent: poll for it)
    deadline = time.monotonic() + 30
    while not (report := json.loads(kiln(env, "usage", "--json")))["data"]:
        assert time.monotonic() < deadline, report
        time.sleep(0.1)
    assert report["data"][0]["model"] == "demo" and report["total"]["requests"] == 1
    table = kiln(env, "usage", "--group-by", "day")
    assert "total" in table and "requests" in table


def test_api_errors_are_one_line(stack: Stack) -> None:
    stack.start_gateway()
    env = {**stack.env, "KILN_URL": stack.url, "KILN_API_KEY": ADMIN_KEY}
    line = fails(env, "models", "get", "nope")
    assert "HTTP 404" in line and "nope" in line
    assert "HTTP 401" in fails({**env, "KILN_API_KEY": "kiln_wrong"}, "models", "list")
    assert "HTTP 404" in fails(env, "finetune", "get", "ftjob-nope")
    assert "HTTP 404" in fails(env, "files", "delete", "file-nope")
    assert "HTTP 422" in fails(env, "usage", "--from", "not-a-day")
    assert "no models" in kiln(env, "models", "list")
    assert json.loads(kiln(env, "files", "list", "--json")) == []


def test_a_server_that_is_down_is_one_line(stack: Stack) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = {**stack.env, "KILN_API_KEY": ADMIN_KEY}
    for argv in (["models", "list"], ["files", "list"], ["finetune", "list"], ["usage"]):
        assert fails(env, *argv, "--url", url) == f"kiln: cannot reach {url} (connection refused)"
    out = run(env, "models", "list", "--url", url, module="service.cli")  # python -m service.cli
    assert out.returncode == 1 and out.stderr.strip() == f"kiln: cannot reach {url} (connection refused)"


def test_files_and_finetune_jobs(stack: Stack, tmp_path) -> None:
    stack.start_gateway()  # no trainer: the job stays queued until cancelled
    env = {**stack.env, "KILN_URL": stack.url, "KILN_API_KEY": ADMIN_KEY}
    (tmp_path / "clf.pt").write_bytes(mlp_bytes())
    kiln(env, "models", "push", "clf", str(tmp_path / "clf.pt"), "--format", "torchscript",
         "--signature", json.dumps(MLP_SIGNATURE))  # fmt: skip
    (tmp_path / "train.jsonl").write_bytes(jsonl(*rows(64, 1)))
    (tmp_path / "spare.jsonl").write_bytes(jsonl(*rows(8, 2)))
    train = json.loads(kiln(env, "files", "upload", str(tmp_path / "train.jsonl")))
    spare = json.loads(kiln(env, "files", "upload", str(tmp_path / "spare.jsonl")))
    assert train["stats"]["rows"] == 64
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert "HTTP 422" in fails(env, "files", "upload", str(tmp_path / "bad.jsonl"))
    listed = kiln(env, "files", "list")
    assert train["id"] in listed and spare["id"] in listed and "train.jsonl" in listed

    job = json.loads(kiln(env, "finetune", "create", "--model", "clf", "--training-file", train["id"]))
    jobs = kiln(env, "finetune", "list")
    assert job["id"] in jobs and "clf" in jobs
    assert "HTTP 409" in fails(env, "files", "delete", train["id"])  # in use by the active job
    assert json.loads(kiln(env, "finetune", "cancel", job["id"]))["status"] == "cancelled"
    assert json.loads(kiln(env, "files", "delete", spare["id"]))["deleted"] is True
    assert spare["id"] not in kiln(env, "files", "list")
    assert [j["id"] for j in json.loads(kiln(env, "finetune", "list", "--json"))["data"]] == [job["id"]]
