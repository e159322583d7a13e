"""OpenAI-compatible text routes: chat completions, completions, embeddings (models: the
/v1/models routes answer OpenAI's model objects too, service/routes/models.py). Thin: read the
body, call on (service/text/). Errors on these routes are OpenAI-shaped (service/openai_errors.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.deps import InferPrincipal, StateDep, read_body
from service.responses import JSONBody
from service.text import embeddings, streaming

router = APIRouter(prefix="/v1", tags=["openai"])


def _body(required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "additionalProperties": True}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": desc}
    for code, desc in (
        (400, "invalid request (OpenAI's error shape)"),
        (401, "no or bad key"),
        (403, "scope or model allowlist"),
        (404, "unknown model"),
        (413, "too large"),
        (429, "rate, token or quota limit (Retry-After)"),
        (503, "queue unavailable"),
        (504, "deadline exceeded"),
    )
}


@router.post("/chat/completions", openapi_extra=_body(["model", "messages"]), responses=_ERRORS)
async def chat_completions(request: Request, principal: InferPrincipal, state: StateDep) -> Response:
    body = await read_body(request, state.settings.max_text_body_bytes)
    return await streaming.chat(state.text, principal, body)


@router.post("/completions", openapi_extra=_body(["model", "prompt"]), responses=_ERRORS)
async def completions(request: Request, principal: InferPrincipal, state: StateDep) -> Response:
    body = await read_body(request, state.settings.max_text_body_bytes)
    return await streaming.completion(state.text, principal, body)


@router.post("/embeddings", openapi_extra=_body(["model", "input"]), responses=_ERRORS)
async def create_embeddings(request: Request, principal: InferPrincipal, state: StateDep) -> JSONBody:
    body = await read_body(request, state.settings.max_text_body_bytes)
    return JSONBody(await embeddings.embeddings(state.text, state.inference, principal, body))
