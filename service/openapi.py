"""The published OpenAPI document: every operation declares the error answers it can give,
all with the one error body {"error", "code"} (service/errors.py writes them)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.access_schemas import ErrorBody

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
_PUBLIC = {"health"}  # unauthenticated probes: only their own declared answers


def _error_response(status: str, desc: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": desc,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    if status == "429":
        out["headers"] = _RATE_HEADERS
    return out


def document(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema()
    for operations in schema.get("paths", {}).values():
        for op in operations.values():
            if set(op.get("tags", ())) & _PUBLIC:
                continue
            responses = op.setdefault("responses", {})
            for status, desc in ERROR_STATUSES.items():
                responses[status] = _error_response(
                    status, responses.get(status, {}).get("description", desc)
                )
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
