"""JSON bodies sent without a JSON content type are read as JSON.

`curl -d '{"version": 1}'` labels its body `application/x-www-form-urlencoded` (and some clients
send none), and FastAPI then hands a JSON route raw bytes ("Input should be a valid dictionary").
A request labelled as a form, as text/plain or not at all, whose whole body parses as a JSON object
or array, gets `Content-Type: application/json` before the router sees it. A real form body
(`a=1&b=2`) never parses as one and is left alone, and upload routes take multipart bodies only,
so no form route is affected. Bodies over `limit` bytes are passed on untouched.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_MAYBE_JSON = (b"application/x-www-form-urlencoded", b"text/plain", None)


def _content_type(scope: Scope) -> bytes | None:
    for key, value in scope["headers"]:
        if key == b"content-type":
            return bytes(value).split(b";", 1)[0].strip().lower()
    return None


def is_json_document(body: bytes) -> bool:
    if body.lstrip()[:1] not in (b"{", b"["):
        return False
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


class JsonBodyContentType:
    def __init__(self, app: ASGIApp, limit: int = 1 << 20) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] in ("POST", "PUT", "PATCH")
            and _content_type(scope) in _MAYBE_JSON
        ):
            await self.app(scope, receive, send)
            return
        first, complete = await self._read(receive)
        if complete and is_json_document(first.get("body", b"")):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> tuple[Message, bool]:
        """The body read up to `limit` as one message, and whether it is the whole body."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message, False
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = bool(message.get("more_body", False))
            if not more or size > self.limit:
                body = b"".join(chunks)
                return {"type": "http.request", "body": body, "more_body": more}, not more
