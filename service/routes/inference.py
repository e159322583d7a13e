"""Open Inference Protocol v2 routes: model metadata, readiness, infer. Thin: parse, call on."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service.deps import InferenceDep, InferPrincipal, RegistryDep, StateDep, read_body
from service.errors import NotReady
from service.inference.async_jobs import wants_async
from service.inference.oip import HEADER_LENGTH, decode_body, header_length, model_config, model_metadata
from service.responses import JSONBody
from service.routes.async_results import async_inference
from service.routes.repository import repository

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


async def _metadata(
    principal: InferPrincipal, registry: RegistryDep, state: StateDep, model: str, version: str | None
) -> dict[str, object]:
    resolved = await state.inference.resolver.resolve(principal.tenant_id, model, version)
    row = await run_in_threadpool(registry.get_visible_model, principal.tenant_id, model)
    versions = await run_in_threadpool(registry.list_versions, row.id)
    return model_metadata(resolved, [v.version for v in versions])


@router.get("/{model}", responses=_ERRORS)
async def metadata(
    model: str, principal: InferPrincipal, registry: RegistryDep, state: StateDep
) -> dict[str, object]:
    return await _metadata(principal, registry, state, model, None)


@router.get("/{model}/versions/{version}", responses=_ERRORS)
async def version_metadata(
    model: str, version: str, principal: InferPrincipal, registry: RegistryDep, state: StateDep
) -> dict[str, object]:
    return await _metadata(principal, registry, state, model, version)


@router.get("/{model}/config", responses=_ERRORS)
async def config(model: str, principal: InferPrincipal, state: StateDep) -> dict[str, object]:
    return model_config(await state.inference.resolver.resolve(principal.tenant_id, model, None))


@router.get("/{model}/versions/{version}/config", responses=_ERRORS)
async def version_config(
    model: str, version: str, principal: InferPrincipal, state: StateDep
) -> dict[str, object]:
    return model_config(await state.inference.resolver.resolve(principal.tenant_id, model, version))


async def _ready(principal: InferPrincipal, state: StateDep, model: str, version: str | None) -> JSONBody:
    resolved = await state.inference.resolver.resolve(principal.tenant_id, model, version)
    if not await repository(state).version_ready(resolved.version_id):
        # OIP: 200 means ready, a 4xx not ready (Triton answers 400); the body is our error shape
        raise NotReady(f"version {resolved.version} of model {resolved.model!r} is not ready")
    return JSONBody({"name": resolved.model, "version": str(resolved.version), "ready": True})


@router.get("/{model}/ready", responses=_ERRORS)
async def model_ready(model: str, principal: InferPrincipal, state: StateDep) -> JSONBody:
    return await _ready(principal, state, model, None)


@router.get("/{model}/versions/{version}/ready", responses=_ERRORS)
async def version_ready(model: str, version: str, principal: InferPrincipal, state: StateDep) -> JSONBody:
    return await _ready(principal, state, model, version)


async def _infer(
    request: Request, principal: InferPrincipal, inference: InferenceDep, model: str, version: str | None
) -> Response:
    limit = inference.settings.max_body_bytes
    body = decode_body(await read_body(request, limit), request.headers.get("content-encoding"), limit)
    header_len = header_length(request.headers.get(HEADER_LENGTH), len(body))
    if wants_async(request.headers.get("prefer")):
        state = request.app.state.kiln
        accepted = await async_inference(state).submit(principal, model, version, body, header_len)
        return JSONBody(
            {"id": accepted.request_id, "status": "queued"},
            status_code=202,
            headers={"Location": accepted.location, "Preference-Applied": "respond-async"},
        )
    out = await inference.infer(principal, model, version, body, header_len)
    return Response(out.body, media_type=out.media_type, headers=out.headers)


@router.post("/{model}/infer", openapi_extra=_INFER_BODY, responses=_ERRORS)
async def infer(model: str, request: Request, principal: InferPrincipal, inference: InferenceDep) -> Response:
    return await _infer(request, principal, inference, model, None)


@router.post("/{model}/versions/{version}/infer", openapi_extra=_INFER_BODY, responses=_ERRORS)
async def infer_version(
    model: str, version: str, request: Request, principal: InferPrincipal, inference: InferenceDep
) -> Response:
    return await _infer(request, principal, inference, model, version)
