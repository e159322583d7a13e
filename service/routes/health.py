"""Liveness, readiness and server metadata. Unauthenticated, as probes need. /metrics is not
here: it names tenants and models, so the gateway serves it on the operators' port only
(service/metrics.serve, KILN_METRICS_PORT)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from service import __version__
from service.deps import StateDep
from service.responses import JSONBody

router = APIRouter()


@router.get("/v2/health/live", tags=["health"])
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", tags=["health"], responses={503: {"description": "not ready"}})
async def ready(state: StateDep) -> JSONBody:
    engine = await state.engine.health()
    db_ok = await run_in_threadpool(_db_ok, state)
    ok = bool(engine["redis"]) and db_ok
    body = {"ready": ok, "redis": engine["redis"], "database": db_ok, "workers": engine["workers"]}
    return JSONBody(body, status_code=200 if ok else 503)


def _db_ok(state: StateDep) -> bool:
    try:
        with state.engine_db.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@router.get("/v2", tags=["health"])
async def server_metadata() -> dict[str, object]:
    return {
        "name": "modelkiln",
        "version": __version__,
        "extensions": ["binary_tensor_data", "model_repository"],
    }
