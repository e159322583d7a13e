"""Typed errors, mapped to HTTP in one place. Error bodies are OIP-shaped
`{"error": "...", "code": "..."}`, or OpenAI's on its routes (service/openai_errors.py), and never
carry a stack trace, path or address."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis import exceptions as redis_errors
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from model_store import errors as store
from service import openai_errors
from service.responses import JSONBody
from workers.contract import errors as contract_errors

log = logging.getLogger("kiln.errors")


class KilnError(Exception):
    status: int = 500
    code: str = "internal"
    details: dict[str, object] | None = None  # extra body fields (a validation report)

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param  # the request field at fault (OpenAI's `param`; not in OIP bodies)
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(max(1, round(retry_after)))


class InvalidInput(KilnError):
    status, code = 400, "invalid_input"


class Unauthorized(KilnError):
    status, code = 401, "unauthorized"


class Forbidden(KilnError):
    status, code = 403, "forbidden"


class NotFound(KilnError):
    status, code = 404, "not_found"


class NotReady(KilnError):
    """A model version asked about is not loaded and warm on any ready worker (OIP: a 4xx)."""

    status, code = 400, "not_ready"


class Conflict(KilnError):
    status, code = 409, "conflict"


class PayloadTooLarge(KilnError):
    status, code = 413, "payload_too_large"


class Unprocessable(KilnError):
    status, code = 422, "unprocessable"


class InvalidDataset(Unprocessable):
    """A dataset failed validation; the body carries the line-numbered report."""

    code = "invalid_dataset"

    def __init__(self, message: str, report: dict[str, Any], param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.details = {"report": report}


class RateLimited(KilnError):
    status, code = 429, "rate_limited"


class ModelFailed(KilnError):
    status, code = 500, "model_error"


class Unavailable(KilnError):
    status, code = 503, "unavailable"


class QueueFull(Unavailable):
    code = "queue_full"


class DeadlineExceeded(KilnError):
    status, code = 504, "deadline_exceeded"


class WorkerLost(KilnError):
    """The worker running a generation went away before it finished."""

    status, code = 502, "worker_lost"


_STORE_MAP: dict[type[store.StoreError], type[KilnError]] = {
    store.NotFound: NotFound,
    store.Conflict: Conflict,
    store.InvalidName: InvalidInput,
    store.InvalidArtifact: Unprocessable,
    store.ArtifactTooLarge: PayloadTooLarge,
    store.IntegrityFailure: Unavailable,
    store.CheckUnavailable: Unavailable,
}


def from_store(exc: store.StoreError) -> KilnError:
    for kind, mapped in _STORE_MAP.items():
        if isinstance(exc, kind):
            return mapped(str(exc))
    return KilnError("internal error")


def from_engine(exc: contract_errors.EngineError) -> KilnError:
    """The typed error an EngineClient error stands for."""
    if isinstance(exc, contract_errors.ReplyTimeout):
        return DeadlineExceeded("request deadline exceeded")
    if isinstance(exc, contract_errors.QueueFull):
        return QueueFull("the model's queue is full; retry later", retry_after=1)
    if isinstance(exc, contract_errors.EngineUnavailable):
        return Unavailable("inference queue is unavailable", retry_after=1)
    return KilnError("internal error")


def _body(
    req: Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    details: dict[str, object] | None = None,
    param: str | None = None,
) -> JSONBody:
    method, path = req.method, req.url.path
    if openai_errors.is_openai(method, path):  # OpenAI's shape on its routes
        return openai_errors.error_response(
            method, path, status, code, message, headers, param=param, details=details
        )
    return JSONBody({"error": message, "code": code, **(details or {})}, status_code=status, headers=headers)


async def _kiln(req: Request, exc: KilnError) -> JSONBody:
    return _body(req, exc.status, exc.code, exc.message, exc.headers, exc.details, exc.param)


async def _store(req: Request, exc: store.StoreError) -> JSONBody:
    mapped = from_store(exc)
    return _body(req, mapped.status, mapped.code, mapped.message)


async def _engine(req: Request, exc: contract_errors.EngineError) -> JSONBody:
    mapped = from_engine(exc)
    return _body(req, mapped.status, mapped.code, mapped.message, mapped.headers)


_SOURCES = ("body", "query", "path", "header", "cookie")  # where FastAPI found a parameter


def _field(loc: tuple[object, ...] | list[object]) -> str | None:
    """The field a validation error names, as OpenAI's `param` says it (`method.type`)."""
    names = [str(x) for x in loc]
    if names and names[0] in _SOURCES:
        names = names[1:]
    return ".".join(names) or None


async def _validation(req: Request, exc: RequestValidationError) -> JSONBody:
    parts = []
    errors = exc.errors()
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
        if err.get("type") == "json_invalid":  # say where: FastAPI puts the offset in loc
            parts[-1] = f"body is not valid JSON: {err.get('ctx', {}).get('error', '')} (char {loc})"
        elif tuple(err.get("loc", ())) == ("body",) and isinstance(err.get("input"), bytes):
            parts[-1] = "the body must be a JSON object: send it with Content-Type: application/json"
    param = _field(errors[0].get("loc", ())) if errors and errors[0].get("type") != "json_invalid" else None
    return _body(req, 422, "unprocessable", "; ".join(parts) or "invalid request", param=param)


async def _data(req: Request, _exc: DataError) -> JSONBody:
    # the database refused a value (a NUL character, a number out of range): the client's input
    return _body(req, 422, "unprocessable", "a value has characters or a range the store cannot hold")


async def _http(req: Request, exc: StarletteHTTPException) -> JSONBody:
    detail = exc.detail if isinstance(exc.detail, str) else "error"
    return _body(req, exc.status_code, "http_error", detail, dict(exc.headers or {}))


async def _gone(_req: Request, _exc: ClientDisconnect) -> Response:
    return Response(status_code=499)  # nobody is listening; nothing to log


async def _redis_down(req: Request, exc: Exception) -> JSONBody:
    # a Redis call that no domain module mapped (a dropped or refused connection, a timeout, a
    # server still loading its data after a restart): the service is down for now, not broken
    log.warning("redis unavailable: %s", type(exc).__name__)
    return _body(req, 503, "unavailable", "a backing service is unavailable", {"Retry-After": "1"})


async def _unexpected(req: Request, exc: Exception) -> JSONBody:
    log.exception("unhandled error", exc_info=exc)
    return _body(req, 500, "internal", "internal error")


Handler = Callable[[Request, Any], Awaitable[Response]]
HANDLERS: dict[type[Exception], Handler] = {
    KilnError: _kiln,
    store.StoreError: _store,
    contract_errors.EngineError: _engine,
    RequestValidationError: _validation,
    DataError: _data,
    StarletteHTTPException: _http,
    ClientDisconnect: _gone,
    redis_errors.ConnectionError: _redis_down,  # BusyLoadingError derives from it in redis-py 8
    redis_errors.BusyLoadingError: _redis_down,  # named too, whatever it derives from
    redis_errors.TimeoutError: _redis_down,
    Exception: _unexpected,
}


def handler_for(exc: Exception) -> Handler:
    """The handler of the nearest class of `exc` (its MRO, as Starlette looks it up): the one
    lookup, for the fast path (service/routes/fastpath.py); the app gets the same table."""
    for kind in type(exc).__mro__:
        handler = HANDLERS.get(kind)
        if handler is not None:
            return handler
    return _unexpected


async def respond(request: Request, exc: Exception) -> Response:
    """The error response for `exc`, as the app's exception handlers write it."""
    return await handler_for(exc)(request, exc)


def install(app: FastAPI) -> None:
    """Every handler of HANDLERS on the app."""
    for kind, handler in HANDLERS.items():
        app.add_exception_handler(kind, handler)
