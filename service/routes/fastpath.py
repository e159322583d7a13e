"""The inference fast path: `POST /v2/models/{m}[/versions/{v}]/infer` without FastAPI's
router and dependency solver.

Measured in-process with a stub engine, routing and dependency solving were most of the
gateway's CPU per request on the hottest route. This middleware matches that one route
itself, authenticates with the same Authenticator, calls the same handler the FastAPI route
calls (service/routes/infer_endpoint.py), and answers errors through the same exception handlers
the app installs (service/errors.py::respond). The FastAPI
routes stay: they document the endpoints in OpenAPI and serve any request this path passes on.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service import errors
from service.routes import infer_endpoint as endpoint
from service.state import AppState
from service.tenancy.auth import require_scope

_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_BODY_UNREAD = frozenset({401, 403, 413})  # answered before (all of) the body was read


class InferFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INFER.fullmatch(scope["path"])
            if match is not None and "app" in scope:
                response = await self._infer(Request(scope, receive), match[1], match[2])
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _infer(self, request: Request, model: str, version: str | None) -> Response:
        try:
            state: AppState = request.app.state.kiln
            principal = require_scope(
                await state.auth.authenticate(request.headers.get("authorization")), "infer"
            )
            return await endpoint.infer(request, principal, state, model, version)
        except Exception as exc:
            response = await errors.respond(request, exc)
            if response.status_code in _BODY_UNREAD:  # do not read on what nobody reads
                response.headers["Connection"] = "close"
            return response
