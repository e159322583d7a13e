"""Open Inference Protocol v2 routes: model metadata, readiness, infer. Thin: parse, call on."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.deps import InferPrincipal, StateDep
from service.responses import JSONBody
from service.routes import infer_endpoint as endpoint

router = APIRouter(prefix="/v2/models", tags=["inference"])

_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype", "data"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "datatype": {"type": "string"},
                                    "data": {"type": "array"},
                                },
                            },
                        },
                        "outputs": {
                            "type": "array",
                            "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                        },
                    },
                }
            }
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": desc}
    for code, desc in (
        (202, "accepted for asynchronous inference (Prefer: respond-async)"),
        (400, "invalid input"),
        (401, "no or bad key"),
        (403, "scope"),
        (404, "unknown model"),
        (413, "too large"),
        (503, "queue unavailable"),
        (504, "deadline exceeded"),
    )
}


@router.get("/{model}", responses=_ERRORS)
async def metadata(model: str, principal: InferPrincipal, state: StateDep) -> dict[str, object]:
    return await state.repository.metadata(principal.tenant_id, model, None)


@router.get("/{model}/versions/{version}", responses=_ERRORS)
async def version_metadata(
    model: str, version: str, principal: InferPrincipal, state: StateDep
) -> dict[str, object]:
    return await state.repository.metadata(principal.tenant_id, model, version)


@router.get("/{model}/config", responses=_ERRORS)
async def config(model: str, principal: InferPrincipal, state: StateDep) -> dict[str, object]:
    return await state.repository.config(principal.tenant_id, model, None)


@router.get("/{model}/versions/{version}/config", responses=_ERRORS)
async def version_config(
    model: str, version: str, principal: InferPrincipal, state: StateDep
) -> dict[str, object]:
    return await state.repository.config(principal.tenant_id, model, version)


@router.get("/{model}/ready", responses=_ERRORS)
async def model_ready(model: str, principal: InferPrincipal, state: StateDep) -> JSONBody:
    return JSONBody(await state.repository.ready(principal.tenant_id, model, None))


@router.get("/{model}/versions/{version}/ready", responses=_ERRORS)
async def version_ready(model: str, version: str, principal: InferPrincipal, state: StateDep) -> JSONBody:
    return JSONBody(await state.repository.ready(principal.tenant_id, model, version))


@router.post("/{model}/infer", openapi_extra=_INFER_BODY, responses=_ERRORS)
async def infer(model: str, request: Request, principal: InferPrincipal, state: StateDep) -> Response:
    return await endpoint.infer(request, principal, state, model, None)


@router.post("/{model}/versions/{version}/infer", openapi_extra=_INFER_BODY, responses=_ERRORS)
async def infer_version(
    model: str, version: str, request: Request, principal: InferPrincipal, state: StateDep
) -> Response:
    return await endpoint.infer(request, principal, state, model, version)
