"""Errors on the OpenAI-compatible routes in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, so that the official SDKs raise their own
exception types (AuthenticationError, PermissionDeniedError, NotFoundError, RateLimitError...).
Every other route keeps the OIP-shaped body (service/errors.py); this module only says which
requests are OpenAI's and how their error body reads."""

from __future__ import annotations

import re

from service.responses import JSONBody

_POSTS = frozenset(("/v1/chat/completions", "/v1/completions", "/v1/embeddings"))
_MODELS = re.compile(r"/v1/models(?:/[^/]+)?/?")
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
    "not_found": "model_not_found",
    "rate_limited": "rate_limit_exceeded",
    "invalid_input": None,
    "unprocessable": None,
}


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
            },
        }
    },
}


def is_openai(method: str, path: str) -> bool:
    """Whether a request is one of the OpenAI-compatible routes."""
    if method == "POST":
        return path.rstrip("/") in _POSTS
    return method == "GET" and _MODELS.fullmatch(path) is not None


def status_of(status: int) -> int:
    """OpenAI answers a malformed request 400 where the OIP routes say 422."""
    return 400 if status == 422 else status


def error_json(status: int, code: str, message: str, param: str | None = None) -> dict[str, object]:
    """The body of an error (also what a stream sends in its `data: {"error": ...}` event)."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if status == 429 and "quota" in message:
        code = "insufficient_quota"
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": _CODES.get(code, code),
        }
    }


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONBody:
    status = status_of(status)
    return JSONBody(error_json(status, code, message), status_code=status, headers=headers)
