"""`kiln models push` the usual ways: a directory is packed and uploaded; a refused push leaves
no empty model behind (the model is created in the same request as its first version)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from service.cli.bundle_pack import files_of
from tests.conftest import ADMIN_KEY
from tests.e2e.harness import ROOT, Stack
from tests.hf_tiny import tiny_bundle

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _kiln(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli.main", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _model(stack: Stack, name: str) -> int:
    return httpx.get(f"{stack.url}/v1/models/{name}", headers=AUTH, timeout=10).status_code


def test_push_a_directory_and_refusals_leave_nothing(stack: Stack, tmp_path: Path) -> None:
    stack.start_gateway()
    env = {**stack.env, "KILN_URL": stack.url, "KILN_API_KEY": ADMIN_KEY}
    bundle = tmp_path / "minilm"
    with tarfile.open(fileobj=io.BytesIO(tiny_bundle())) as tar:
        tar.extractall(bundle, filter="data")
    (bundle / "extra").mkdir()
    (bundle / "extra" / "README.txt").write_text("notes\n")
    assert [m for m, _ in files_of(bundle)] == [
        "config.json",
        "extra/README.txt",
        "model.safetensors",
        "tokenizer.json",
    ]

    done = _kiln(env, "models", "push", "enc", str(bundle), "--format", "hf-encoder")
    assert done.returncode == 0, done.stderr
    pushed = json.loads(done.stdout)
    assert pushed["version"] == 1 and pushed["format"] == "hf-encoder"

    # refused by the server (not a valid ONNX file): 422, and no empty model named "broken"
    junk = tmp_path / "broken.onnx"
    junk.write_bytes(b"not a model")
    refused = _kiln(env, "models", "push", "broken", str(junk), "--format", "onnx")
    assert refused.returncode == 1 and "422" in refused.stderr, refused.stderr
    assert _model(stack, "broken") == 404
    # a refused version of an existing model leaves the model as it was
    assert _kiln(env, "models", "push", "enc", str(junk), "--format", "onnx").returncode == 1
    assert httpx.get(f"{stack.url}/v1/models/enc", headers=AUTH, timeout=10).json()["versions"] == [1]

    # a link inside the directory: refused before anything is uploaded
    (bundle / "link.json").symlink_to(bundle / "config.json")
    linked = _kiln(env, "models", "push", "linked", str(bundle), "--format", "hf-encoder")
    assert linked.returncode == 1 and "link.json is a symbolic link" in linked.stderr, linked.stderr
    assert _model(stack, "linked") == 404
