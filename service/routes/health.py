"""Liveness, readiness and server metadata. Unauthenticated, as probes need. /metrics is not
here: it names tenants and models, so the gateway serves it on the operators' port only
(service/metrics.serve, KILN_METRICS_PORT)."""

from __future__ import annotations

from typing import Any

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
    reasons = not_ready_reasons(engine, db_ok, state.settings.ready_min_workers)
    body: dict[str, object] = {
        "ready": not reasons,
        "redis": engine["redis"],
        "database": db_ok,
        "workers": engine["workers"],
        "workers_not_ready": engine.get("workers_not_ready", 0),
    }
    if reasons:
        body["reason"] = "; ".join(reasons)
    return JSONBody(body, status_code=503 if reasons else 200)


def not_ready_reasons(engine: dict[str, Any], db_ok: bool, min_workers: int) -> list[str]:
    """Why this gateway cannot serve inference now (empty: ready). Workers count only while
    their heartbeat is live and says ready (a dead worker's expires within KILN_HEARTBEAT_TTL_S)."""
    reasons = []
    if not engine["redis"]:
        reasons.append("the queue (Redis) is unavailable")
    if not db_ok:
        reasons.append("the database is unavailable")
    if engine["redis"] and engine["workers"] < min_workers:
        busy = engine.get("workers_not_ready", 0)
        reasons.append(
            f"{engine['workers']} live, ready workers (need {min_workers})"
            + (f"; {busy} alive but not ready" if busy else "")
        )
    return reasons


def _db_ok(state: StateDep) -> bool:
    try:
        with state.db_engine.connect() as conn:
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
