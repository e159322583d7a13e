"""`kiln serve` as real processes: a second instance refuses and touches nothing; children that
die are restarted, and readiness says 503 while no worker is live."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.harness import ROOT, free_port

pytestmark = pytest.mark.e2e


@dataclass
class Serve:
    proc: subprocess.Popen[str]
    log: Path
    url: str

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def key(self, timeout: float = 90) -> str:
        return _poll(lambda: _line(self, "admin key: "), timeout, "the admin key")


def _line(s: Serve, prefix: str) -> str | None:
    for line in s.text().splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix)
    if s.proc.poll() is not None:
        raise RuntimeError(f"kiln serve exited:\n{s.text()[-3000:]}")
    return None


def _poll(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def run(data_dir: Path, port: int, name: str, **env: str) -> Serve:
        log = tmp_path / f"{name}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
        argv = ["serve", "--demo", "--port", str(port), "--data-dir", str(data_dir)]
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli.main", *argv],
                cwd=ROOT,
                env={**base, **env, "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        started.append(Serve(proc, log, f"http://127.0.0.1:{port}"))
        return started[-1]

    yield run
    for s in started:
        if s.proc.poll() is None:
            os.killpg(s.proc.pid, signal.SIGTERM)
            try:
                s.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(s.proc.pid, signal.SIGKILL)


def _infer(url: str, key: str) -> int:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}
    auth = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{url}/v2/models/demo/infer", json=body, headers=auth, timeout=30).status_code


def test_a_second_serve_refuses_and_leaves_the_first_alone(start, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start(data, free_port(), "first")
    key = first.key()
    assert _infer(first.url, key) == 200
    sock_inode = (data / "redis.sock").stat().st_ino

    # the same data directory, another port: refused at once, nothing printed as if it were up
    second = start(data, free_port(), "second")
    assert second.proc.wait(30) != 0
    out = second.text()
    assert "already running on the data directory" in out and str(data) in out, out
    assert "is up" not in out and "admin key" not in out and "curl " not in out, out
    assert (data / "redis.sock").stat().st_ino == sock_inode  # the first one's socket untouched

    # another data directory, the first one's port: refused before starting anything
    port = int(first.url.rsplit(":", 1)[1])
    third = start(tmp_path / "other", port, "third")
    assert third.proc.wait(30) != 0
    out = third.text()
    assert f"cannot listen on 127.0.0.1:{port}" in out and "is up" not in out, out
    assert not (tmp_path / "other" / "redis.sock").exists()

    assert first.proc.poll() is None
    assert [_infer(first.url, key) for _ in range(20)] == [200] * 20
    assert httpx.get(f"{first.url}/v2/health/ready", timeout=10).status_code == 200


def _worker(serve: Serve) -> psutil.Process | None:
    for child in psutil.Process(serve.proc.pid).children():
        if "worker" in child.cmdline():
            return child
    return None


def test_embedded_mode_restarts_a_dead_worker_and_is_not_ready_meanwhile(start, tmp_path: Path) -> None:
    env = {"KILN_HEARTBEAT_TTL_S": "1", "KILN_SERVE_RESTART_DELAY_S": "5"}
    serve = start(tmp_path / "data", free_port(), "serve", **env)
    key = serve.key()
    ready = f"{serve.url}/v2/health/ready"
    assert httpx.get(ready, timeout=10).json()["workers"] == 1
    worker = _worker(serve)
    assert worker is not None
    worker.send_signal(signal.SIGKILL)

    def not_ready() -> dict[str, Any] | None:
        r = httpx.get(ready, timeout=10)
        return r.json() if r.status_code == 503 else None

    body = _poll(not_ready, 30, "readiness 503 while no worker is live")
    assert body["workers"] == 0 and "workers" in body["reason"], body
    assert _poll(lambda: "restarting in" in serve.text(), 30, "the exit logged")

    def restarted() -> bool:
        w = _worker(serve)
        return w is not None and w.pid != worker.pid

    _poll(restarted, 60, "a new worker")
    _poll(lambda: httpx.get(ready, timeout=10).status_code == 200, 60, "ready again")
    assert _infer(serve.url, key) == 200
    assert "worker 1 restarted" in serve.text()
