"""Liveness, readiness, server metadata and /metrics. Unauthenticated, as probes need."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from service import __version__, metrics
from service.deps import StateDep
from service.ops_metrics import FineTuneJobsCollector
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


@router.get("/metrics", tags=["health"], include_in_schema=False)
async def prometheus_metrics(state: StateDep) -> Response:
    jobs = FineTuneJobsCollector(state.sessions)  # one small query; off the event loop
    body, content_type = await run_in_threadpool(metrics.render, jobs)
    return Response(body, media_type=content_type)
