"""The published OpenAPI document: every operation declares the error answers it can give,
all with the one error body {"error", "code"} (service/errors.py writes them), except the
OpenAI-compatible routes, whose errors are OpenAI's (service/openai_errors.py)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service import openai_errors
from service.tenancy.access_schemas import ErrorBody

ERROR_STATUSES: dict[str, str] = {
    "400": "invalid input",
    "401": "no, invalid, expired or revoked API key",
    "403": "the key lacks the scope, or may not use this model",
    "404": "not found (or owned by another tenant)",
    "405": "method not allowed",
    "409": "conflict",
    "413": "body, upload or tensor over its limit",
    "422": "unprocessable request",
    "429": "rate limit, concurrency limit or monthly quota reached",
    "500": "model failed",
    "503": "unavailable; retry later",
    "504": "deadline exceeded",
}
_RATE_HEADERS = {
    name: {"schema": {"type": "string"}, "description": desc}
    for name, desc in (
        ("Retry-After", "seconds to wait"),
        ("X-RateLimit-Limit", "the limit that was reached"),
        ("X-RateLimit-Remaining", "requests left"),
        ("X-RateLimit-Reset", "seconds until the limit resets"),
    )
}
# examples that name the demo model of `kiln serve --demo` (documentation, and seeds for fuzzers)
_PARAM_EXAMPLES = {
    "model": "demo",
    "name": "demo",
    "version": "1",
    "alias": "production",
    "tenant": "default",
}
_INFER_EXAMPLE = {
    "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]
}
_PUBLIC = {"health"}  # unauthenticated probes: only their own declared answers


def _error_response(status: str, desc: str, body: str = "ErrorBody") -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": desc,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
    }
    if status == "429":
        out["headers"] = _RATE_HEADERS
    return out


def document(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema()
    components["OpenAIErrorBody"] = openai_errors.SCHEMA
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            _add_examples(path, op)
            if set(op.get("tags", ())) & _PUBLIC:
                continue
            body = "OpenAIErrorBody" if openai_errors.is_openai(method.upper(), path) else "ErrorBody"
            responses = op.setdefault("responses", {})
            for status, desc in ERROR_STATUSES.items():
                responses[status] = _error_response(
                    status, responses.get(status, {}).get("description", desc), body
                )
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def _add_examples(path: str, op: dict[str, Any]) -> None:
    for param in op.get("parameters", ()):
        if param.get("in") == "path" and param.get("name") in _PARAM_EXAMPLES:
            param.setdefault("example", _PARAM_EXAMPLES[param["name"]])
    body = op.get("requestBody", {}).get("content", {}).get("application/json")
    if path.endswith("/infer") and body is not None:
        body.setdefault("example", _INFER_EXAMPLE)


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
