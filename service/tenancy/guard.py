"""What a request may cost before a route reads it: authentication and a size limit, as a pure
ASGI middleware in front of FastAPI's router.

FastAPI reads (and for multipart, spools to disk) a request's body before it solves the route's
dependencies, the key check among them; so without this a request with no key could make the
gateway read 400 MB of JSON or spool a 2 GiB upload before it is answered 401. Here:
- a request that carries a body is authenticated from its Authorization header first (the same
  cached Authenticator the routes use) and answered 401 without a byte of its body read, unless
  its path is public (health, metrics, docs), and the route still checks scopes as before;
- a declared Content-Length over the route class's limit is answered 413 at once; a chunked
  body is counted as the route reads it and cut at the limit (413).
A request without a body passes through untouched. The inference fast path (service/routes/fastpath.py)
sits in front of this middleware and does the same for its route itself (it authenticates before
it reads, and reads with the inference body limit), so the hot path costs nothing here.
Early answers carry `Connection: close`, so the server does not go on reading the unread body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import openai_errors
from service.errors import KilnError, PayloadTooLarge
from service.responses import JSONBody
from service.settings import Settings

PUBLIC_PATHS = frozenset(
    (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
    )
)
_MODEL_UPLOAD = re.compile(r"/v1/models/[^/]+/versions/?")
_DATASET_UPLOAD = re.compile(r"/v1/files/?")
_INFER = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer")
_MULTIPART_SLACK = 1 << 20  # form fields and part headers around an uploaded file


class BodyTooLarge(PayloadTooLarge):
    """Raised from `receive` when a streamed body passes its limit."""


@dataclass(frozen=True, slots=True)
class BodyLimits:
    json: int  # management bodies: small JSON documents
    inference: int
    model_upload: int
    dataset_upload: int
    text: int  # the OpenAI text routes (prompts, embedding inputs)

    @classmethod
    def from_settings(cls, s: Settings) -> BodyLimits:
        return cls(
            json=s.max_json_body_bytes,
            inference=s.max_body_bytes,
            model_upload=s.max_upload_bytes + _MULTIPART_SLACK,
            dataset_upload=min(s.max_upload_bytes, s.max_dataset_bytes) + _MULTIPART_SLACK,
            text=s.max_text_body_bytes,
        )

    def for_route(self, method: str, path: str) -> int:
        if method == "POST":
            if _INFER.fullmatch(path):
                return self.inference
            if _MODEL_UPLOAD.fullmatch(path):
                return self.model_upload
            if _DATASET_UPLOAD.fullmatch(path):
                return self.dataset_upload
            if openai_errors.is_text(method, path):
                return self.text
        return self.json


def declared_body(headers: list[tuple[bytes, bytes]]) -> tuple[int, bool]:
    """(declared Content-Length or 0, whether the request has a body at all)."""
    length, chunked = 0, False
    for name, value in headers:
        if name == b"content-length":
            length = int(value) if value.isdigit() else 0
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked or length > 0


async def answer(exc: KilnError, scope: Scope, receive: Receive, send: Send) -> None:
    headers = {**exc.headers, "Connection": "close"}
    method, path = scope["method"], scope["path"]
    if openai_errors.is_openai(method, path):
        response = openai_errors.error_response(method, path, exc.status, exc.code, exc.message, headers)
    else:
        response = JSONBody({"error": exc.message, "code": exc.code}, status_code=exc.status, headers=headers)
    await response(scope, receive, send)


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.limits = BodyLimits.from_settings(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, has_body = declared_body(scope["headers"])
        if not has_body:
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_route(scope["method"], scope["path"])
        try:
            if scope["path"] not in PUBLIC_PATHS:
                await self._authenticate(scope)
            if declared > limit:
                raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        except KilnError as exc:
            await answer(exc, scope, receive, send)
            return
        await _Bounded(self.app, limit)(scope, receive, send)

    @staticmethod
    async def _authenticate(scope: Scope) -> None:
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        await scope["app"].state.kiln.auth.authenticate(authorization)


class _Bounded:
    """One request whose body is cut at `limit` bytes: past it, `receive` raises BodyTooLarge and
    the client gets 413, however the app handled the error (FastAPI turns an error while parsing
    a form into a 400)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.received = 0
        self.exceeded: BodyTooLarge | None = None
        self.started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def bounded_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    self.exceeded = BodyTooLarge(f"request body is over the {self.limit}-byte limit")
                    raise self.exceeded
            return message

        async def guarded_send(message: Message) -> None:
            if self.exceeded is None:
                self.started = self.started or message["type"] == "http.response.start"
                await send(message)
            elif not self.started:  # the app's own answer to the cut body is replaced by a 413
                self.started = True
                await answer(self.exceeded, scope, receive, send)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except BodyTooLarge as exc:
            if not self.started:
                self.started = True
                await answer(exc, scope, receive, send)
