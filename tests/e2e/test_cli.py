"""The `kiln` command line against a real gateway: keys made on the server over HTTP (from any
directory, leaving nothing behind), models pushed over HTTP, lists as tables, and every failure
one line on stderr with a non-zero exit (never a traceback, never a dict repr)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ADMIN_KEY
from tests.e2e.harness import ROOT, Stack, free_port
from tests.ft_data import MLP_SIGNATURE, jsonl, mlp_bytes, rows
from tests.models import SCALE_SIGNATURE, Scale, demo_onnx_bytes, demo_reference, torchscript_bytes

pytestmark = pytest.mark.e2e


def run(
    env: dict[str, str], *argv: str, module: str = "service.cli.main", cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=cwd,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    for text in (out.stdout, out.stderr):
        assert "Traceback" not in text and "HTTP Request:" not in text, text[-2000:]
    return out


def kiln(env: dict[str, str], *argv: str, cwd: Path = ROOT) -> str:
    out = run(env, *argv, cwd=cwd)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def fails(env: dict[str, str], *argv: str, cwd: Path = ROOT) -> str:
    """The one line a failing command prints on stderr (and it exits non-zero, prints no stdout)."""
    out = run(env, *argv, cwd=cwd)
    assert out.returncode != 0 and out.stdout == "", (out.returncode, out.stdout)
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: "), out.stderr
    assert "{'" not in lines[0], lines[0]  # the server's message, never a Python dict repr
    return lines[0]


def test_keys_create_and_models_push(stack: Stack, tmp_path) -> None:
    stack.start_gateway()
    stack.start_worker("worker-1")
    admin = {**stack.env, "KILN_URL": stack.url, "KILN_API_KEY": ADMIN_KEY}
    made = json.loads(kiln(admin, "keys", "create", "--scope", "manage", "--scope", "infer"))
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


def test_api_errors_are_one_line(stack: Stack, tmp_path: Path) -> None:
    stack.start_gateway()
    env = {**stack.env, "KILN_URL": stack.url, "KILN_API_KEY": ADMIN_KEY}
    line = fails(env, "models", "get", "nope")
    assert "HTTP 404" in line and "nope" in line
    assert "HTTP 401" in fails({**env, "KILN_API_KEY": "kiln_wrong"}, "models", "list")
    # both error shapes the server writes read the same: OpenAI's on files and fine-tuning
    assert (
        fails(env, "finetune", "get", "ftjob-nope")
        == "kiln: HTTP 404: fine-tuning job 'ftjob-nope' not found"
    )
    assert fails(env, "files", "delete", "file-nope") == "kiln: HTTP 404: file 'file-nope' not found"
    line = fails({**env, "KILN_API_KEY": "kiln_wrong"}, "files", "list")
    assert line == "kiln: HTTP 401: invalid, expired or revoked API key", line
    (tmp_path / "x.jsonl").write_text("{}\n")
    line = fails(env, "files", "upload", str(tmp_path / "x.jsonl"), "--purpose", "batch")
    assert line == "kiln: HTTP 422: purpose must be 'fine-tune'", line
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
    line = fails(env, "files", "upload", str(tmp_path / "bad.jsonl"))
    assert line.startswith("kiln: HTTP 422: dataset is invalid: line 1") and line.endswith("(param: file)"), (
        line
    )
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


def test_keys_over_http_from_any_directory(stack: Stack, tmp_path: Path) -> None:
    """Outside the checkout, with only KILN_URL and a key: create, list, rotate and revoke keys on
    the server, and nothing written where the command ran (no stray .kiln/)."""
    stack.start_gateway()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    admin = {"KILN_URL": stack.url, "KILN_API_KEY": ADMIN_KEY}

    def ok(env: dict[str, str], *argv: str) -> str:
        return kiln(env, *argv, cwd=elsewhere)

    def no(env: dict[str, str], *argv: str) -> str:
        return fails(env, *argv, cwd=elsewhere)

    made = json.loads(ok(admin, "keys", "create", "--scope", "manage", "--scope", "infer", "--name", "ci"))
    assert made["scopes"] == ["infer", "manage"] and made["key"].startswith("kiln_") and made["name"] == "ci"
    manager = {**admin, "KILN_API_KEY": made["key"]}
    listed = json.loads(ok(admin, "keys", "list", "--json"))
    assert made["id"] in [k["id"] for k in listed] and all("key" not in k for k in listed)
    table = ok(manager, "keys", "list")
    assert made["prefix"] in table and "active" in table and made["key"] not in table

    infer = json.loads(ok(manager, "keys", "create", "--scope", "infer"))
    rotated = json.loads(ok(manager, "keys", "rotate", str(infer["id"]), "--overlap", "0"))
    assert rotated["rotated_from"] == infer["id"] and rotated["key"] != infer["key"]
    revoked = json.loads(ok(manager, "keys", "revoke", str(rotated["id"])))
    assert revoked["id"] == rotated["id"] and revoked["active"] is False and revoked["revoked_at"]
    assert "revoked" in ok(manager, "keys", "list")

    # a key that may not: one clear line each, nothing changed
    reader = {**admin, "KILN_API_KEY": json.loads(ok(manager, "keys", "create", "--scope", "infer"))["key"]}
    assert no(reader, "keys", "list") == "kiln: HTTP 403: this key lacks the 'manage' scope"
    line = no(manager, "keys", "create", "--scope", "admin")
    assert line.startswith("kiln: HTTP 403: this key cannot create a key with more power than its own"), line
    assert no(manager, "tenants", "list") == "kiln: HTTP 403: this key lacks the 'admin' scope"

    # another tenant's valid key: this tenant's keys are not there for it to list, read or revoke
    assert json.loads(ok(admin, "tenants", "create", "acme"))["name"] == "acme"
    acme = json.loads(ok(admin, "keys", "create", "--scope", "manage", "--tenant", "acme"))
    intruder = {**admin, "KILN_API_KEY": acme["key"]}
    assert [k["id"] for k in json.loads(ok(intruder, "keys", "list", "--json"))] == [acme["id"]]
    line = no(intruder, "keys", "list", "--tenant", "default")
    assert line == "kiln: HTTP 403: only an admin key may list the keys of another tenant", line
    assert no(intruder, "keys", "revoke", str(made["id"])) == "kiln: HTTP 404: key not found"
    line = no(intruder, "keys", "revoke", str(made["id"]), "--tenant", "default")
    assert line.startswith("kiln: HTTP 403: only an admin key"), line
    assert no(intruder, "keys", "rotate", str(made["id"])).startswith("kiln: HTTP 404:")
    mine = {k["id"]: k for k in json.loads(ok(manager, "keys", "list", "--json"))}
    assert mine[made["id"]]["active"] is True and mine[made["id"]]["revoked_at"] is None  # untouched
    # the admin acts on another tenant's keys by naming it
    assert [k["id"] for k in json.loads(ok(admin, "keys", "list", "--json", "--tenant", "acme"))] == [
        acme["id"]
    ]
    assert json.loads(ok(admin, "keys", "revoke", str(acme["id"]), "--tenant", "acme"))["active"] is False

    assert list(elsewhere.iterdir()) == []  # no .kiln/ (nor anything else) where the CLI ran
    url = f"http://127.0.0.1:{free_port()}"
    assert no({**admin, "KILN_URL": url}, "keys", "list") == f"kiln: cannot reach {url} (connection refused)"
    line = no({}, "db", "create-key", "--scope", "admin")  # the host-only path: no database here
    assert line.startswith("kiln: no database at ") and list(elsewhere.iterdir()) == []
