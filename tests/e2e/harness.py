"""Real processes on free ports: start, poll health, fail fast when a child dies, kill the
process tree at the end (after vLLM's tests/utils.py::RemoteOpenAIServer)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, module: str = "service.cli.main"
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill9(self) -> None:
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 15) -> int | None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


def serving_but_for_workers(resp: httpx.Response) -> bool:
    """/v2/health/ready answered 503 only for want of a live worker: Redis and database are up."""
    body = resp.json() if resp.status_code == 503 else {}
    return bool(body.get("redis") and body.get("database"))


class Stack:
    """A gateway and N workers as real `kiln` processes against the given database and Redis."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.gateway_port = free_port()
        self.gateway_metrics_port = free_port()  # the operators' port: /metrics is not on the public one
        self.url = f"http://127.0.0.1:{self.gateway_port}"
        self.worker_ports: dict[str, int] = {}

    def start_gateway(self, processes: int = 1, module: str = "service.cli.main") -> Proc:
        p = Proc(
            "gateway",
            [
                "gateway",
                "--port",
                str(self.gateway_port),
                "--workers",
                str(processes),
                "--metrics-port",
                str(self.gateway_metrics_port),
            ],
            self.env,
            self.log_dir,
            module,
        )
        self.procs.append(p)
        # ready but for its workers: a gateway is ready only once a worker is (none started yet)
        self.wait_http(f"{self.url}/v2/health/ready", p, accept=serving_but_for_workers)
        self.wait_http(f"http://127.0.0.1:{self.gateway_metrics_port}/metrics", p)
        return p

    def start_worker(
        self, name: str, module: str = "service.cli.main", env: dict[str, str] | None = None
    ) -> Proc:
        port = free_port()
        p = Proc(
            name,
            ["worker", "--metrics-port", str(port), "--threads", "1"],
            {**self.env, **(env or {})},
            self.log_dir,
            module,
        )
        self.procs.append(p)
        self.worker_ports[name] = port
        self.wait_http(f"http://127.0.0.1:{port}/metrics", p)
        return p

    def start_trainer(self, name: str, threads: int = 1) -> Proc:
        """A `kiln trainer` process, ready when its /metrics answers."""
        port = free_port()
        argv = ["trainer", "--threads", str(threads), "--metrics-port", str(port)]
        p = Proc(name, argv, self.env, self.log_dir)
        self.procs.append(p)
        self.worker_ports[name] = port
        self.wait_http(f"http://127.0.0.1:{port}/metrics", p)
        return p

    def wait_http(
        self,
        url: str,
        proc: Proc,
        timeout: float = 60,
        accept: Callable[[httpx.Response], bool] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.log()}")
            try:
                resp = httpx.get(url, timeout=1)
                if resp.status_code == 200 or (accept is not None and accept(resp)):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{proc.name} not ready at {url}:\n{proc.log()}")

    def check_alive(self) -> None:
        for p in self.procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} died:\n{p.log()}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total
