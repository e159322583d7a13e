"""The gateway/worker boundary: the gateway reaches Redis only through the EngineClient (and the
rate limiter), every key name comes from RedisKeys, every Redis client retries, the app and the
inference fast path answer errors from one handler table, and a traceback never reaches a client."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry as AsyncRetry
from starlette.requests import Request

from model_store import errors as store
from model_store.errors import public_message
from service import errors
from service.app import create_app
from service.settings import Settings
from workers.contract import errors as contract_errors
from workers.contract.redis_conn import RETRIES, connect_async, connect_async_single, connect_sync
from workers.contract.redis_keys import RedisKeys

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = [p for p in (ROOT / "service").rglob("*.py") if "cli" not in p.parts]


def test_gateway_modules_hold_no_redis_client_of_their_own() -> None:
    """Only the rate limiter (service/tenancy/admission.py) talks to Redis beside the EngineClient."""
    for path in GATEWAY:
        tree = ast.parse(path.read_text())
        names = {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names
        }
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        uses_client = "redis.asyncio" in names or "redis.asyncio" in modules or "redis_conn" in str(modules)
        assert not uses_client or path.name == "admission.py", path


def test_no_gateway_module_builds_a_redis_key() -> None:
    for path in [*GATEWAY, *(ROOT / "workers" / "contract").glob("*.py")]:
        if path.name == "redis_keys.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                assert not text.startswith(":") or "prefix" not in ast.unparse(node), (
                    path,
                    ast.unparse(node),
                )


def test_key_names_share_one_prefix() -> None:
    keys = RedisKeys("p")
    names = [
        keys.request_stream(3),
        keys.request_stream(3, 2),
        keys.streams,
        keys.reply_stream("g"),
        keys.async_result("r"),
        keys.lifecycle,
        keys.dead_letter,
        keys.worker("w"),
        keys.finetune_jobs,
        keys.rate_bucket("k", 1),
        keys.in_flight("t", 2),
        keys.quota_month("k", 1, "202611"),
        keys.usage_day(2, "20261126"),
    ]
    assert all(n.startswith("p:") for n in names) and len(set(names)) == len(names)
    assert keys.version_of(keys.request_stream(3, 2)) == 3


def test_every_redis_client_retries() -> None:
    url = "redis://127.0.0.1:1/0"  # never connected: clients connect on first use
    pools = [
        connect_async(url).connection_pool,
        connect_async_single(url).connection_pool,
        connect_sync(url, socket_timeout=1).connection_pool,
    ]
    for pool in pools:
        assert pool.connection_kwargs["retry"].get_retries() == RETRIES
    # asyncio pools take redis-py's asyncio Retry (its backoff awaits); a synchronous Retry handed
    # to an asyncio client is a DeprecationWarning since redis-py 8.2 (issue 22)
    for pool in pools[:2]:
        assert isinstance(pool.connection_kwargs["retry"], AsyncRetry)
    assert not isinstance(pools[2].connection_kwargs["retry"], AsyncRetry)


def test_the_app_installs_the_one_handler_table() -> None:
    app = create_app(Settings(env="dev"))
    for kind, handler in errors.HANDLERS.items():
        assert app.exception_handlers[kind] is handler


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.QueueFull("full"), 503),
        (store.NotFound("no"), 404),
        (contract_errors.ReplyTimeout("late"), 504),
        (contract_errors.EngineUnavailable("down"), 503),
        (KeyError("unexpected"), 500),
        (redis_errors.ConnectionError("Connection closed by server."), 503),
        (redis_errors.BusyLoadingError("Redis is loading the dataset in memory"), 503),
        (redis_errors.TimeoutError("Timeout reading from socket"), 503),
        (redis_errors.ResponseError("WRONGTYPE"), 500),  # a bug, not an outage
    ],
)
async def test_the_fast_path_lookup_answers_as_the_app(exc: Exception, status: int) -> None:
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []})
    response = await errors.respond(request, exc)
    assert response.status_code == status
    if isinstance(exc, redis_errors.RedisError) and status == 503:
        assert response.headers["retry-after"] and b'"unavailable"' in bytes(response.body)


def test_public_message_drops_frames_and_paths() -> None:
    exc = RuntimeError(
        'Traceback of TorchScript (most recent call last):\n  File "/srv/models/x/code.py", line 3\n'
        "    return x @ w\n    ~~~~~~ <--- HERE\nRuntimeError: shape mismatch in /srv/models/x/w.bin"
    )
    assert public_message(exc) == "RuntimeError: shape mismatch in <path>"
