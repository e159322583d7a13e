"""`kiln serve`: gateway + workers + SQLite + local artifacts + a private Redis, one command."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from model_store.errors import Conflict
from service.cli.demo import (
    CHAT_MODEL,
    CHAT_QUESTION,
    DEMO_INPUT,
    DEMO_MODEL,
    demo_onnx_bytes,
    smollm2_gguf,
)
from service.cli.embedded import AlreadyServing, PrivateRedis, ServeLock
from service.cli.procs import client_host, curl_line, free_port, kiln_command, spawn
from service.cli.supervise import Supervisor
from service.settings import Settings

if TYPE_CHECKING:
    from model_store.blobs import BlobStore
    from model_store.registry import Registry


def _admin_key(settings: Settings) -> str | None:
    """The admin key to show: the bootstrap key, one made now for an empty database, or the
    one this data directory made before. Stored 0600 in the data directory."""
    from model_store.blobs import BlobStore
    from model_store.db import make_db_engine, make_sessionmaker
    from model_store.registry import Registry
    from service.tenancy import api_keys as keys

    if settings.bootstrap_admin_key:
        return settings.bootstrap_admin_key
    key_file = settings.data_dir / "admin.key"
    db_engine = make_db_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(db_engine)
    try:
        if keys.count_keys(sessions) == 0:
            tenant = Registry(sessions, BlobStore(settings.blob_dir)).ensure_tenant(settings.default_tenant)
            _row, secret = keys.create_key(sessions, tenant, ["admin"], name="serve")
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret)
            return secret
        return key_file.read_text().strip() if key_file.exists() else None
    finally:
        db_engine.dispose()


def register_demo(settings: Settings) -> None:
    from model_store.blobs import BlobStore
    from model_store.db import make_db_engine, make_sessionmaker
    from model_store.registry import Registry
    from model_store.signature import VersionConfig

    db_engine = make_db_engine(settings.resolved_database_url)
    blobs = BlobStore(settings.blob_dir)
    registry = Registry(make_sessionmaker(db_engine), blobs, settings.upload_check)
    tenant = registry.ensure_tenant(settings.default_tenant)
    with contextlib.suppress(Conflict):
        registry.create_model(tenant, DEMO_MODEL, "demo: y = tanh(x @ W + b)")
    model = registry.get_model(tenant, DEMO_MODEL)
    if not registry.list_versions(model.id):
        fd, tmp = blobs.new_tempfile()
        data = demo_onnx_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        row = registry.add_version(
            tenant,
            DEMO_MODEL,
            "onnx",
            tmp,
            hashlib.sha256(data).hexdigest(),
            len(data),
            None,
            VersionConfig(max_batch_size=64),
        )
        registry.set_alias(tenant, DEMO_MODEL, "production", row.version)
    _register_chat(registry, blobs, tenant)
    db_engine.dispose()


def _register_chat(registry: Registry, blobs: BlobStore, tenant: int) -> None:
    """SmolLM2 as `chat`, where its package is installed (checked like any upload)."""
    from model_store.signature import VersionConfig

    gguf = smollm2_gguf()
    if gguf is None:
        return
    with contextlib.suppress(Conflict):
        registry.create_model(tenant, CHAT_MODEL, "chat: SmolLM2-135M-Instruct (GGUF, Q4_1)")
    if registry.list_versions(registry.get_model(tenant, CHAT_MODEL).id):
        return
    fd, tmp = blobs.new_tempfile()
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out, gguf.open("rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    size = gguf.stat().st_size
    row = registry.add_version(
        tenant, CHAT_MODEL, "hf-causal-lm", tmp, digest.hexdigest(), size, None, VersionConfig()
    )
    registry.set_alias(tenant, CHAT_MODEL, "production", row.version)


def _announce_when_ready(
    url: str, key: str | None, demo: bool, metrics_url: str | None, timeout_s: float = 60
) -> None:
    """Say "up" (with the key and a curl line) only once the stack answers ready; else say why not."""
    deadline = time.monotonic() + timeout_s
    why = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    break
        except urllib.error.HTTPError as e:
            why = json.loads(e.read() or b"{}").get("reason", f"HTTP {e.code}")
        except OSError as e:
            why = str(e)
        time.sleep(0.1)
    else:
        print(f"modelkiln at {url} is not ready after {timeout_s:.0f} s: {why}", file=sys.stderr, flush=True)
        return
    print("\n".join(ready_lines(url, key, demo, metrics_url)), flush=True)


def ready_lines(url: str, key: str | None, demo: bool, metrics_url: str | None = None) -> list[str]:
    """What `kiln serve` says once it is up: the key, a curl line and the command line, each of
    which pastes into a shell as it is, and where Prometheus scrapes the gateway's metrics."""
    kiln = kiln_command()
    lines = [f"modelkiln is up at {url}"]
    if metrics_url:
        lines.append(f"metrics (Prometheus): {metrics_url}")
    if not key:
        lines.append(
            "admin key: not shown (this data directory's keys were made elsewhere); "
            f"make one with: {kiln} db create-key --scope admin"
        )
        return lines
    lines.append(f"admin key: {key}")
    if demo:
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": DEMO_INPUT[0]}]}
        lines.append("try it:")
        lines.append(curl_line(url, key, DEMO_MODEL, body))  # pastes as it is
        if smollm2_gguf() is not None:
            chat = {
                "model": CHAT_MODEL,
                "messages": [{"role": "user", "content": CHAT_QUESTION}],
                "max_tokens": 30,
                "temperature": 0,
            }
            lines.append("chat with SmolLM2 (OpenAI's shape; the first answer loads the model):")
            lines.append(curl_line(url, key, CHAT_MODEL, chat, "/v1/chat/completions"))
    lines.append("the command line (kiln --help for more):")
    lines.append(f"export KILN_URL={shlex.quote(url)} KILN_API_KEY={shlex.quote(key)}")
    lines.append(f"{kiln} models list")
    return lines


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _listen(host: str, port: int) -> socket.socket:
    """The gateway's listening socket, bound before anything starts: a port in use stops here."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise AlreadyServing(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str | None = None
    workers: int = 1
    demo: bool = False
    metrics_port: int | None = None  # None: port + 1 (a free port when that one is taken); 0: off


METRICS_HOST = "127.0.0.1"  # the operators' port stays on loopback, as `kiln gateway`'s does


def _metrics(args: ServeOptions, settings: Settings) -> str | None:
    """Start the gateway's Prometheus /metrics listener (the one `kiln gateway --metrics-port`
    starts) on its own port, beside the public one; its URL, or None when off. A port asked for
    that is taken stops `kiln serve` (AlreadyServing); the default one falls back to a free port."""
    from service.cli.procs import serve_metrics

    if args.metrics_port == 0:
        return None
    wanted = args.port + 1 if args.metrics_port is None else args.metrics_port
    try:
        bound = serve_metrics(settings, METRICS_HOST, wanted if wanted <= 65535 else 0)
    except OSError as e:
        if args.metrics_port is not None:
            raise AlreadyServing(
                f"cannot serve metrics on {METRICS_HOST}:{wanted}: {e.strerror or e}"
            ) from None
        bound = serve_metrics(settings, METRICS_HOST, 0)
    return f"http://{METRICS_HOST}:{bound}/metrics"


def serve(args: ServeOptions) -> int:
    data_dir = Path(args.data_dir or os.environ.get("KILN_DATA_DIR", ".kiln")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = ServeLock(data_dir)
    try:
        lock.acquire()  # before anything else: a second instance touches nothing
        sock = _listen(args.host, args.port)
    except AlreadyServing as e:
        lock.release()
        print(f"kiln serve: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        with sock:
            return _serve_locked(args, data_dir, sock)
    finally:
        lock.release()


def _serve_locked(args: ServeOptions, data_dir: Path, sock: socket.socket) -> int:
    import uvicorn

    from migrations.upgrade import upgrade
    from service.app import create_app

    os.environ["KILN_DATA_DIR"] = str(data_dir)
    private: PrivateRedis | None = None
    if not os.environ.get("KILN_REDIS_URL"):
        private = PrivateRedis(data_dir)
        private.start()
        os.environ["KILN_REDIS_URL"] = private.url
    children: Supervisor | None = None
    try:
        settings = Settings()
        children = Supervisor(settings.serve_restart_delay_s, settings.serve_restart_max_delay_s)
        upgrade(settings.resolved_database_url)
        try:
            metrics_url = _metrics(args, settings)
        except AlreadyServing as e:
            print(f"kiln serve: {e}", file=sys.stderr, flush=True)
            return 2
        key = _admin_key(settings)
        if args.demo:
            register_demo(settings)
        env = dict(os.environ)
        for i in range(max(1, args.workers)):
            children.add(
                f"worker {i + 1}", lambda: spawn(["worker", "--metrics-port", str(free_port())], env)
            )
        children.add("trainer", lambda: spawn(["trainer"], env))  # fine-tune jobs
        children.start()  # restarts a child that dies, with backoff
        # uvicorn re-raises SIGTERM after its graceful shutdown: turn it into SystemExit so the
        # cleanup below (workers, the private redis-server) always runs
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        url = f"http://{client_host(args.host)}:{args.port}"
        announce = (url, key, args.demo, metrics_url)
        threading.Thread(target=_announce_when_ready, args=announce, daemon=True).start()
        config = uvicorn.Config(create_app(settings), log_level="warning", access_log=False)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if children is not None:
            children.stop()
        if private is not None:
            private.stop()
    return 0
