"""The HTTP side of chat completions and completions: the whole response, or server-sent events
ending with `data: [DONE]`. An error before the first token is an HTTP error; one after it is an
SSE `data: {"error": ...}` event that ends the stream (never a silent truncation). A client that
goes away mid-stream cancels its generation (the worker frees the sequence)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from service.errors import KilnError
from service.openai_errors import error_json, status_of
from service.responses import JSONBody
from service.tenancy.api_keys import Principal
from service.text import shapes
from service.text.generation import Generation, Job, TextService
from service.text.schemas import ChatRequest, CompletionRequest, parse

log = logging.getLogger("kiln.text")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def chat(service: TextService, principal: Principal, body: bytes) -> Response:
    """POST /v1/chat/completions."""
    req = parse(ChatRequest, body)
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    service.check_size(len(messages), sum(len(m["content"]) for m in messages))
    job = Job(req.model, "chat", req.gen_params(), req.stream, messages=messages)
    return await _run(service, principal, job, req.include_usage)


async def completion(service: TextService, principal: Principal, body: bytes) -> Response:
    """POST /v1/completions."""
    req = parse(CompletionRequest, body)
    prompt = req.text()
    service.check_size(1, len(prompt))
    job = Job(req.model, "completion", req.gen_params(), req.stream, prompt=prompt)
    return await _run(service, principal, job, req.include_usage)


async def _run(service: TextService, principal: Principal, job: Job, include_usage: bool) -> Response:
    gen = await service.start(principal, job)
    shape = shapes.Shape(
        job.mode == "chat",
        ("chatcmpl-" if job.mode == "chat" else "cmpl-") + gen.request_id,
        int(time.time()),
        job.model,
    )
    try:
        if not job.stream:
            return JSONBody(await _whole(gen, shape))
        first = await gen.next()  # an error before the first token: an HTTP error
    except BaseException:
        await gen.close()
        raise
    return EventStream(_events(gen, shape, first, include_usage))


async def _whole(gen: Generation, shape: shapes.Shape) -> dict[str, Any]:
    choices: dict[int, shapes.Choice] = defaultdict(shapes.Choice)
    while (chunk := await gen.next()) is not None:
        choices[chunk.index].add(chunk)
    await gen.close()
    return shapes.whole(shape, choices, gen.usage)


async def _events(
    gen: Generation, shape: shapes.Shape, chunk: Any, include_usage: bool
) -> AsyncIterator[bytes]:
    started: set[int] = set()
    offsets: dict[int, int] = defaultdict(int)
    try:
        while chunk is not None:
            first = chunk.index not in started
            if first or chunk.text or chunk.finish or chunk.logprobs:  # not a bare last chunk
                event = shapes.chunk_event(shape, chunk, first, offsets[chunk.index], include_usage)
                started.add(chunk.index)
                offsets[chunk.index] += len(chunk.text)
                yield sse(event)
            chunk = await gen.next()
        if include_usage:
            yield sse(shapes.usage_event(shape, gen.usage))
        yield b"data: [DONE]\n\n"
    except KilnError as exc:
        yield sse(error_json(status_of(exc.status), exc.code, exc.message, exc.param))
    except Exception:  # never a silent truncation: the client learns the stream failed
        log.exception("a generation stream failed")
        yield sse(error_json(500, "internal", "internal error"))
    finally:
        await gen.close()


class EventStream(StreamingResponse):
    """A text/event-stream response that stops (and so cancels its generation) as soon as the
    client disconnects, whichever ASGI spec version the server speaks."""

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=_SSE_HEADERS)
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                await self._stream(send)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.events.aclose()  # type: ignore[attr-defined]

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for data in self.events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away (ASGI 2.4 servers raise instead of telling)
            return
