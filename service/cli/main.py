"""`kiln`: run the platform (serve, gateway, worker), manage the database, keys and models."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from service.settings import Settings

log = logging.getLogger("kiln")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def freeze_startup_objects() -> None:
    """Move everything allocated at start-up (torch alone is ~10^6 objects) out of the garbage
    collector's reach: a full collection walking them stalls a process for ~100 ms, which showed
    as a p99 ten times the p50 under load."""
    gc.collect()
    gc.freeze()


def _setup_logging() -> None:
    from pydantic import ValidationError

    from workers.contract import jsonlog

    try:
        s = Settings()
    except ValidationError:  # the command itself reports bad settings
        jsonlog.configure()
        return
    jsonlog.configure(s.log_format, s.log_level, s.log_requests)


# database -------------------------------------------------------------------------------------
def cmd_db_upgrade(_args: argparse.Namespace) -> int:
    from migrations.upgrade import upgrade

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    print("database is at the latest revision")
    return 0


# keys -----------------------------------------------------------------------------------------
def cmd_keys_create(args: argparse.Namespace) -> int:
    from model_store.blobs import BlobStore
    from model_store.db import make_db_engine, make_sessionmaker
    from model_store.registry import Registry
    from service.tenancy import api_keys as keys

    settings = Settings()
    sessions = make_sessionmaker(make_db_engine(settings.resolved_database_url))
    registry = Registry(sessions, BlobStore(settings.blob_dir))
    tenant = registry.ensure_tenant(args.tenant or settings.default_tenant)
    row, secret = keys.create_key(sessions, tenant, args.scope, name=args.name or "")
    print(json.dumps({"id": row.id, "prefix": row.prefix, "scopes": row.scopes.split(","), "key": secret}))
    return 0


def _sessions() -> Any:
    from model_store.db import make_db_engine, make_sessionmaker

    return make_sessionmaker(make_db_engine(Settings().resolved_database_url))


def _tenant_id(sessions: Any, name: str | None) -> int:
    from service.tenancy import tenants

    return tenants.by_name(sessions, name or Settings().default_tenant).id


def _key_json(row: Any) -> dict[str, Any]:
    from service.tenancy.key_admin import key_public

    return key_public(row).model_dump(mode="json")


def cmd_keys_list(args: argparse.Namespace) -> int:
    from service.tenancy import api_keys as keys

    sessions = _sessions()
    for row in keys.list_keys(sessions, _tenant_id(sessions, args.tenant)):
        print(json.dumps(_key_json(row)))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from service.tenancy import api_keys as keys

    sessions = _sessions()
    print(json.dumps(_key_json(keys.revoke(sessions, _tenant_id(sessions, args.tenant), args.id))))
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from service.tenancy import api_keys as keys

    sessions = _sessions()
    overlap = Settings().key_rotation_overlap_s if args.overlap is None else args.overlap
    row, secret = keys.rotate(sessions, _tenant_id(sessions, args.tenant), args.id, overlap)
    print(json.dumps({**_key_json(row), "key": secret}))
    return 0


def cmd_tenants_create(args: argparse.Namespace) -> int:
    from service.tenancy import tenants

    row = tenants.create_tenant(_sessions(), args.name)
    print(json.dumps({"id": row.id, "name": row.name}))
    return 0


def cmd_tenants_list(_args: argparse.Namespace) -> int:
    from service.tenancy import tenants

    for row in tenants.list_tenants(_sessions()):
        print(json.dumps({"id": row.id, "name": row.name, "limits": row.limits}))
    return 0


def _add_key_commands(k: Any) -> None:
    for name, func, help_ in (
        ("list", cmd_keys_list, "list a tenant's keys (prefixes only)"),
        ("revoke", cmd_keys_revoke, "revoke a key"),
        ("rotate", cmd_keys_rotate, "issue a successor; the old key works for --overlap seconds"),
    ):
        c = k.add_parser(name, help=help_)
        if name != "list":
            c.add_argument("id", type=int)
        if name == "rotate":
            c.add_argument("--overlap", type=int, default=None, help="seconds (default: setting)")
        c.add_argument("--tenant", default=None)
        c.set_defaults(func=func)


def _add_tenant_commands(sub: Any) -> None:
    t = sub.add_parser("tenants", help="tenants").add_subparsers(dest="tenants_cmd", required=True)
    tc = t.add_parser("create", help="create a tenant (direct database access)")
    tc.add_argument("name")
    tc.set_defaults(func=cmd_tenants_create)
    t.add_parser("list", help="list tenants").set_defaults(func=cmd_tenants_list)


# models (over HTTP, like any client) ----------------------------------------------------------
def cmd_models_push(args: argparse.Namespace) -> int:
    from service.cli.bundle_pack import NotPackable
    from service.cli.client import KilnClient, KilnError

    client = KilnClient(args.url, args.key)
    signature = _json_arg(args.signature)
    config = _json_arg(args.config)
    try:
        result = client.push_model(
            args.name,
            Path(args.file),
            args.format,
            signature=signature,
            config=config,
            description=args.description or "",
        )
    except (NotPackable, KilnError) as e:
        print(f"kiln models push: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


def _json_arg(raw: str | None) -> Any:
    if not raw:
        return None
    if raw.startswith("@"):
        return json.loads(Path(raw[1:]).read_text())
    return json.loads(raw)


# processes ------------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    import redis
    from prometheus_client import REGISTRY, start_http_server

    from model_store.blobs import BlobStore
    from model_store.db import make_db_engine, make_sessionmaker
    from model_store.registry import Registry
    from workers.contract.redis_keys import RedisKeys
    from workers.inference.gpu import GpuCollector
    from workers.inference.runners import preload_runtimes
    from workers.inference.worker import Worker, WorkerConfig

    settings = Settings()
    if args.metrics_port:
        REGISTRY.register(GpuCollector())
        start_http_server(args.metrics_port, addr=args.metrics_host)
    blobs = BlobStore(settings.blob_dir)
    registry = Registry(
        make_sessionmaker(make_db_engine(settings.resolved_database_url)), blobs, settings.upload_check
    )
    client = redis.Redis.from_url(
        settings.resolved_redis_url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30
    )
    worker = Worker(
        client,
        RedisKeys(settings.redis_prefix),
        registry,
        blobs,
        WorkerConfig(
            read_count=settings.worker_read_count,
            claim_idle_ms=settings.claim_idle_ms,
            claim_interval_ms=settings.claim_interval_ms,
            max_deliveries=settings.max_deliveries,
            heartbeat_ttl_s=settings.heartbeat_ttl_s,
            reply_ttl_s=settings.reply_ttl_s,
            async_result_ttl_s=settings.async_result_ttl_s,
            memory_budget_bytes=settings.worker_memory_budget_mb << 20,
            fence=settings.fence,
            model_memory_bytes=settings.model_memory_mb << 20,
            hung_backoff_s=settings.hung_backoff_s,
            threads=args.threads,
            metrics_port=args.metrics_port,
            artifact_limits=settings.artifact_limits,
        ),
    )
    preload_runtimes()  # import torch/onnxruntime now, not on the first request
    freeze_startup_objects()
    worker.install_signal_handlers()
    worker.run()
    return 0


def _gateway_metrics(settings: Settings, host: str, port: int) -> None:
    """/metrics on the operators' port, in this (parent) process; never on the public port."""
    from model_store.db import make_db_engine, make_sessionmaker
    from service import metrics
    from service.ops_metrics import FineTuneJobsCollector

    sessions = make_sessionmaker(make_db_engine(settings.resolved_database_url))
    metrics.serve(host, port, FineTuneJobsCollector(sessions))


def cmd_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="kiln-prom-")
    settings = Settings()
    metrics_port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    if metrics_port:
        _gateway_metrics(settings, args.metrics_host or settings.metrics_host, metrics_port)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from service.cli.embedded_serve import serve

    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln", description="modelkiln: models as a service")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="the whole platform in one command (embedded mode)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--data-dir", default=None, help="default: $KILN_DATA_DIR or .kiln")
    s.add_argument("--workers", type=int, default=1, help="inference worker processes")
    s.add_argument("--demo", action="store_true", help="register the demo model, print a curl")
    s.set_defaults(func=cmd_serve)

    g = sub.add_parser("gateway", help="the HTTP gateway")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--workers", type=int, default=1, help="gateway processes")
    g.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics here (default $KILN_METRICS_PORT; 0: off)",
    )
    g.add_argument("--metrics-host", default=None, help="default $KILN_METRICS_HOST or 127.0.0.1")
    g.set_defaults(func=cmd_gateway)

    w = sub.add_parser("worker", help="an inference worker")
    w.add_argument("--metrics-port", type=int, default=0, help="serve /metrics here (0: off)")
    w.add_argument("--metrics-host", default="127.0.0.1")
    w.add_argument("--threads", type=int, default=0, help="intra-op threads (0: runtime default)")
    w.set_defaults(func=cmd_worker)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_cmd", required=True)
    db.add_parser("upgrade", help="alembic upgrade to the latest revision").set_defaults(func=cmd_db_upgrade)

    k = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_cmd", required=True)
    kc = k.add_parser("create", help="create a key (direct database access)")
    kc.add_argument(
        "--scope", action="append", required=True, choices=["infer", "manage", "finetune", "admin"]
    )
    kc.add_argument("--tenant", default=None)
    kc.add_argument("--name", default=None)
    kc.set_defaults(func=cmd_keys_create)
    _add_key_commands(k)
    _add_tenant_commands(sub)

    m = sub.add_parser("models", help="models").add_subparsers(dest="models_cmd", required=True)
    mp = m.add_parser("push", help="create the model if needed and upload a new version")
    mp.add_argument("name")
    mp.add_argument("file", help="the artifact, or a directory (packed as a tar bundle: hf-encoder)")
    mp.add_argument("--format", required=True, choices=["onnx", "torchscript", "hf-encoder"])
    mp.add_argument("--signature", help="JSON, or @file")
    mp.add_argument("--config", help="JSON, or @file")
    mp.add_argument("--description", default="")
    mp.add_argument("--url", default=os.environ.get("KILN_URL", "http://127.0.0.1:8000"))
    mp.add_argument("--key", default=os.environ.get("KILN_API_KEY", ""))
    mp.set_defaults(func=cmd_models_push)

    from service.cli import finetune as cli_finetune

    cli_finetune.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


def curl_line(url: str, key: str, model: str, body: dict[str, Any]) -> str:
    return (
        f"curl -s -H {shlex.quote('Authorization: Bearer ' + key)} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))} "
        f"{url}/v2/models/{model}/infer"
    )


def spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "service.cli.main", *argv], env=env)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
