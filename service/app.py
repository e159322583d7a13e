"""The app factory. Builds everything from one Settings object; no side effects at import."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from model_store import fence
from model_store.blobs import BlobStore
from model_store.db import make_db_engine, make_sessionmaker
from model_store.registry import Registry
from service import __version__, errors, openapi, ops_metrics
from service.catalog import ModelCatalog
from service.checks import GatewayCheck, WorkerChecks, any_local
from service.inference.async_jobs import AsyncInference
from service.inference.repository import ModelRepository
from service.inference.sync import InferenceService
from service.inference.versions import VersionResolver
from service.json_body import JsonBodyContentType
from service.metrics import GatewayMetrics
from service.request_id import RequestIdMiddleware
from service.routes import (
    async_results,
    compress,
    files,
    finetune,
    health,
    inference,
    models,
    openai,
    repository,
    sweeps,
)
from service.routes import keys as key_routes
from service.routes import sharing as sharing_routes
from service.routes.fastpath import InferFastPath
from service.settings import Settings
from service.state import AppState
from service.tenancy import api_keys as keys
from service.tenancy.admission import Admission
from service.tenancy.auth import Authenticator
from service.tenancy.guard import RequestGuard
from service.tenancy.key_admin import KeyAdmin
from service.text.generation import TextService
from workers.contract import jsonlog
from workers.contract.client import StreamsEngineClient
from workers.contract.redis_keys import RedisKeys

log = logging.getLogger("kiln.gateway")
_METRICS: GatewayMetrics | None = None


def gateway_metrics() -> GatewayMetrics:
    """One set of collectors per process (the registry is global to prometheus-client)."""
    global _METRICS
    if _METRICS is None:
        _METRICS = GatewayMetrics()
    return _METRICS


def bootstrap_admin(settings: Settings, registry: Registry, sessions: sessionmaker[Session]) -> None:
    if not settings.bootstrap_admin_key:
        return
    if keys.count_keys(sessions) == 0:
        tenant = registry.ensure_tenant(settings.default_tenant)
        try:
            keys.create_key(
                sessions,
                tenant,
                ["admin"],
                name="bootstrap",
                secret=settings.bootstrap_admin_key,
            )
        except IntegrityError:  # another gateway process (uvicorn --workers N) seeded it first
            return
        log.info("seeded the bootstrap admin key for tenant %r", settings.default_tenant)


def build_state(settings: Settings) -> AppState:
    db_engine = make_db_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(db_engine)
    blobs = BlobStore(settings.blob_dir)
    redis_keys = RedisKeys(settings.redis_prefix)
    checks = WorkerChecks(settings.resolved_redis_url, redis_keys)
    registry = Registry(sessions, blobs, GatewayCheck(settings.upload_check, settings.checks, blobs, checks))
    engine = StreamsEngineClient(settings.resolved_redis_url, redis_keys)
    resolver = VersionResolver(registry, settings.version_cache_ttl_s)
    metrics = gateway_metrics()
    metrics.tenant_labels.limit = settings.metrics_max_tenants
    ops_metrics.TENANT_LABELS.limit = settings.metrics_max_tenants
    admission = Admission.from_url(settings.resolved_redis_url, redis_keys)
    inference = InferenceService(settings, resolver, engine, redis_keys, metrics, admission)
    return AppState(
        settings=settings,
        db_engine=db_engine,
        sessions=sessions,
        blobs=blobs,
        registry=registry,
        auth=Authenticator(sessions, settings.key_cache_ttl_s),
        engine=engine,
        inference=inference,
        async_inference=AsyncInference(inference, settings.async_result_ttl_s),
        repository=ModelRepository(registry, resolver, engine, settings.request_timeout_s),
        catalog=ModelCatalog(registry, blobs, resolver, settings.max_upload_bytes),
        key_admin=KeyAdmin(sessions),
        text=TextService(settings, resolver, engine, redis_keys, admission),
        checks=checks,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings)
        await run_in_threadpool(bootstrap_admin, settings, state.registry, state.sessions)
        if settings.fence != "off" and any_local(settings.checks):
            # checks run in this gateway's fenced children: start their fork server now
            threading.Thread(target=fence.prestart, name="kiln-fence-prestart", daemon=True).start()
        await state.engine.start()
        app.state.kiln = state
        try:
            yield
        finally:
            await state.engine.close()
            if state.checks is not None:
                state.checks.close()
            if state.inference.admission is not None:
                await state.inference.admission.close()
            state.db_engine.dispose()

    app = FastAPI(
        title="modelkiln",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    errors.install(app)
    app.add_middleware(JsonBodyContentType)  # curl -d: a JSON body labelled as a form (after the guard)
    # authentication and body limits before a route reads a body; inside the fast path, which
    # does both itself for the inference route
    app.add_middleware(RequestGuard, settings=settings)
    app.add_middleware(InferFastPath)
    # added after the fast path, so the request id wraps it too
    app.add_middleware(RequestIdMiddleware)
    if settings.log_format == "json":  # gateway processes started by uvicorn --workers too
        jsonlog.configure(settings.log_format, settings.log_level, settings.log_requests)
    app.include_router(health.router)
    app.include_router(inference.router)
    app.include_router(models.router)
    app.include_router(openai.router)
    app.include_router(files.router)
    app.include_router(finetune.router)
    app.include_router(sweeps.router)
    app.include_router(compress.router)
    app.include_router(key_routes.router)
    app.include_router(sharing_routes.router)
    app.include_router(async_results.router)
    app.include_router(repository.router)
    openapi.install(app)
    return app
