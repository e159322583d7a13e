"""Readiness: can this gateway serve inference now (the queue, the database, enough workers)?"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from workers.contract.messages import EngineClient


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


def _db_ok(db_engine: Engine) -> bool:
    try:
        with db_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


async def readiness(engine: EngineClient, db_engine: Engine, min_workers: int) -> dict[str, object]:
    """The readiness body: "ready", what each dependency says, and "reason" when not ready."""
    health = await engine.health()
    db_ok = await run_in_threadpool(_db_ok, db_engine)
    reasons = not_ready_reasons(health, db_ok, min_workers)
    body: dict[str, object] = {
        "ready": not reasons,
        "redis": health["redis"],
        "database": db_ok,
        "workers": health["workers"],
        "workers_not_ready": health.get("workers_not_ready", 0),
    }
    if reasons:
        body["reason"] = "; ".join(reasons)
    return body
