"""OIP model repository extension: POST /v2/repository/index, .../models/{m}/load, /unload."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request

from service.deps import InferPrincipal, ManagePrincipal, StateDep, read_body
from service.errors import InvalidInput
from service.responses import JSONBody

router = APIRouter(prefix="/v2/repository", tags=["repository"])
_MAX_BODY = 64 << 10


async def _parameters(request: Request) -> dict[str, Any]:
    body = await read_body(request, _MAX_BODY)
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("request body is not valid JSON") from exc
    params = doc.get("parameters") if isinstance(doc, dict) else None
    if params is not None and not isinstance(params, dict):
        raise InvalidInput("'parameters' must be an object")
    return params or {}


@router.post("/index")
async def index(principal: InferPrincipal, state: StateDep) -> JSONBody:
    return JSONBody(await state.repository.index_allowed(principal))


@router.post("/models/{model}/load")
async def load(model: str, request: Request, principal: ManagePrincipal, state: StateDep) -> JSONBody:
    params = await _parameters(request)
    if "config" in params or any(k.startswith("file:") for k in params):
        raise InvalidInput("loading with an override config or files is not supported; upload a version")
    version = params.get("version")
    if version is not None and not isinstance(version, str | int):
        raise InvalidInput("'version' must be a string or an integer")
    await state.repository.load(principal.tenant_id, model, None if version is None else str(version))
    return JSONBody({})


@router.post("/models/{model}/unload")
async def unload(model: str, request: Request, principal: ManagePrincipal, state: StateDep) -> JSONBody:
    await _parameters(request)  # unload_dependents: adapters loaded on a base always go with it
    await state.repository.unload(principal.tenant_id, model)
    return JSONBody({})
