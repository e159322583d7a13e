"""Small helpers shared by `kiln serve` and the process commands: child processes, free ports,
the curl line that `kiln serve --demo` prints, the operators' /metrics listener. Nothing here
imports the command line itself."""

from __future__ import annotations

import gc
import json
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def freeze_startup_objects() -> None:
    """Move everything allocated at start-up (torch alone is ~10^6 objects) out of the garbage
    collector's reach: a full collection walking them stalls a process for ~100 ms, which showed
    as a p99 ten times the p50 under load."""
    gc.collect()
    gc.freeze()


def curl_line(url: str, key: str, model: str, body: dict[str, Any], path: str = "") -> str:
    """A curl command line that pastes into a POSIX shell as it is (default: the model's OIP
    infer route; else `path`)."""
    return (
        f"curl -s -H {shlex.quote('Authorization: Bearer ' + key)} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))} "
        f"{url}{path or f'/v2/models/{model}/infer'}"
    )


def spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`kiln ARGV...` as a child process of this Python."""
    return subprocess.Popen([sys.executable, "-m", "service.cli.main", *argv], env=env)


def client_host(host: str) -> str:
    """The address a client on this machine uses for a server listening on `host`."""
    if host in ("", "0.0.0.0"):  # a listening address: clients use loopback
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def kiln_command() -> str:
    """How to run `kiln` from here: `kiln` when it is on PATH, else the script installed next
    to this Python (e.g. `.venv/bin/kiln` after `make run`), else `python -m service.cli`."""
    script = Path(sys.executable).parent / "kiln"
    on_path = shutil.which("kiln")
    if on_path and script.exists() and Path(on_path).resolve() == script.resolve():
        return "kiln"
    if script.exists():
        with_venv = script.absolute()
        try:
            return shlex.quote(str(with_venv.relative_to(Path.cwd())))
        except ValueError:
            return shlex.quote(str(with_venv))
    return f"{shlex.quote(sys.executable)} -m service.cli"


def serve_metrics(settings: Settings, host: str, port: int) -> int:
    """The gateway's /metrics (and the fine-tune jobs by status, from the database) on the
    operators' port, in this (parent) process; never on the public port. Returns the port bound
    (0: one the system picks); OSError when it cannot listen there."""
    from model_store.db import make_db_engine, make_sessionmaker
    from service import metrics
    from service.ops_metrics import FineTuneJobsCollector

    sessions = make_sessionmaker(make_db_engine(settings.resolved_database_url))
    return metrics.serve(host, port, FineTuneJobsCollector(sessions))
