"""Liveness, readiness and server metadata. Unauthenticated, as probes need. /metrics is not
here: it names tenants and models, so the gateway serves it on the operators' port only
(service/metrics.serve, KILN_METRICS_PORT)."""

from __future__ import annotations

from fastapi import APIRouter

from service import __version__
from service.deps import StateDep
from service.readiness import readiness
from service.responses import JSONBody

router = APIRouter()


@router.get("/v2/health/live", tags=["health"])
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", tags=["health"], responses={503: {"description": "not ready"}})
async def ready(state: StateDep) -> JSONBody:
    body = await readiness(state.engine, state.db_engine, state.settings.ready_min_workers)
    return JSONBody(body, status_code=200 if body["ready"] else 503)


@router.get("/v2", tags=["health"])
async def server_metadata() -> dict[str, object]:
    return {
        "name": "modelkiln",
        "version": __version__,
        "extensions": ["binary_tensor_data", "model_repository"],
    }
