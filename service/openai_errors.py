"""Errors on the OpenAI-compatible routes in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, so that the official SDKs raise their own
exception types (AuthenticationError, PermissionDeniedError, NotFoundError, RateLimitError...)
with the server's message in them. Every other route keeps the OIP-shaped body
(service/errors.py); this module only says which requests are OpenAI's and how their error body
reads.

Two families of routes are OpenAI's:
- the model-facing ones (chat/completions, completions, embeddings, GET /v1/models[/{id}]): a
  malformed request is 400, as OpenAI answers it, and a missing model is `model_not_found`;
- the resource ones (/v1/files..., /v1/fine_tuning/...): the status stays this platform's own
  (a refused fine-tune body or dataset is 422, RELIABILITY.md), only the body is OpenAI's; a
  dataset's line-numbered `report` rides inside the error object, where the SDKs keep it
  (`exc.body["report"]`)."""

from __future__ import annotations

import re

from service.responses import JSONBody

_POSTS = frozenset(("/v1/chat/completions", "/v1/completions", "/v1/embeddings"))
_MODELS = re.compile(r"/v1/models(?:/[^/]+)?/?")
_RESOURCES = re.compile(r"/v1/(?:files|fine_tuning)(?:/.*)?")
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
}
_CODES = {
    "unauthorized": "invalid_api_key",
    "rate_limited": "rate_limit_exceeded",
    "invalid_input": None,
    "unprocessable": None,
}
_MODEL_CODES = {**_CODES, "not_found": "model_not_found"}  # what a model-facing route looks up


# the error body's JSON schema, for the OpenAPI document (service/openapi.py)
SCHEMA: dict[str, object] = {
    "title": "OpenAIErrorBody",
    "description": "OpenAI's error shape, on the OpenAI-compatible routes",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
                "report": {"type": "object", "description": "a refused dataset's line-numbered report"},
            },
        }
    },
}


def is_text(method: str, path: str) -> bool:
    """Whether a request is one of the OpenAI text routes (chat/completions, completions, embeddings)."""
    return method == "POST" and path.rstrip("/") in _POSTS


def _is_models(method: str, path: str) -> bool:
    return is_text(method, path) or (method == "GET" and _MODELS.fullmatch(path) is not None)


def is_openai(method: str, path: str) -> bool:
    """Whether a request is one of the OpenAI-compatible routes (its errors are OpenAI-shaped)."""
    return _is_models(method, path) or _RESOURCES.fullmatch(path) is not None


def status_of(status: int) -> int:
    """OpenAI answers a malformed request 400 where the OIP routes say 422 (model-facing routes)."""
    return 400 if status == 422 else status


def error_json(
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    details: dict[str, object] | None = None,
    *,
    models: bool = True,
) -> dict[str, object]:
    """The body of an error (also what a stream sends in its `data: {"error": ...}` event).
    `models`: a model-facing route, where a 404 is `model_not_found`."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if status == 429 and "quota" in message:
        code = "insufficient_quota"
    codes = _MODEL_CODES if models else _CODES
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": codes.get(code, code),
            **(details or {}),
        }
    }


def error_response(
    method: str,
    path: str,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    param: str | None = None,
    details: dict[str, object] | None = None,
) -> JSONBody:
    """The error answer to a request on an OpenAI-compatible route (`is_openai`)."""
    models = _is_models(method, path)
    status = status_of(status) if models else status
    body = error_json(status, code, message, param, details, models=models)
    return JSONBody(body, status_code=status, headers=headers)
