"""Shared fixtures: a clean PostgreSQL database per test (copied from a migrated template),
a private key prefix on the real Redis per test, the app in-process, workers in threads.
Which PostgreSQL and Redis: the machine's where they answer, else the run's own
(tests/own_services.py; KILN_TEST_SERVICES=own forces those)."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from prometheus_client import CollectorRegistry

from migrations.upgrade import upgrade
from model_store.blobs import BlobStore
from model_store.db import make_db_engine, make_sessionmaker
from model_store.registry import Registry
from service.app import create_app
from service.settings import Settings
from service.tenancy import api_keys as keys
from tests import own_services
from workers.contract.redis_keys import RedisKeys
from workers.inference.metrics import WorkerMetrics
from workers.inference.worker import Worker, WorkerConfig

# Set in pytest_configure, before any test module is imported (they import these names).
PG_ADMIN = os.environ.get("KILN_TEST_PG", own_services.MACHINE_PG)
REDIS_URL = os.environ.get("KILN_TEST_REDIS", own_services.MACHINE_REDIS)
# KILN_TEST_PG=sqlite: a migrated SQLite file per test instead (the GPU machine has no PostgreSQL;
# scripts/gpu-check.sh sets it there). The tests that need PostgreSQL itself still need it.
SQLITE = PG_ADMIN == "sqlite"
ADMIN_KEY = "kiln_testadmin_" + "a" * 40
_services: own_services.Choice | None = None


@pytest.hookimpl(trylast=True)  # after the terminal reporter exists
def pytest_configure(config: pytest.Config) -> None:
    """Choose (and if need be start) PostgreSQL and Redis once per run. The URLs go into the
    environment: xdist workers, e2e processes and nested runs inherit them, so nothing starts twice."""
    global PG_ADMIN, REDIS_URL, SQLITE, _services
    if not hasattr(config, "workerinput"):  # an xdist worker: its controller chose already
        try:
            _services = own_services.choose(dict(os.environ))
        except (ValueError, RuntimeError) as e:
            raise pytest.UsageError(str(e)) from None
        os.environ["KILN_TEST_PG"] = _services.pg_url
        os.environ["KILN_TEST_REDIS"] = _services.redis_url
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(_services.line())
    PG_ADMIN, REDIS_URL = os.environ["KILN_TEST_PG"], os.environ["KILN_TEST_REDIS"]
    SQLITE = PG_ADMIN == "sqlite"


def pytest_unconfigure(config: pytest.Config) -> None:
    global _services
    if _services is not None:
        _services.stop()
        _services = None


def _pg_url(db: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + db


def _admin_conn() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN, autocommit=True)


@pytest.fixture(scope="session")
def pg_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if SQLITE:
        path = tmp_path_factory.mktemp("sqlite") / "template.db"
        upgrade(f"sqlite:///{path}")
        yield str(path)
        return
    name = f"kiln_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with _admin_conn() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(_pg_url(name))
    yield name
    with _admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test only."""
    if SQLITE:
        path = Path(pg_template).with_name(f"kiln_t_{uuid.uuid4().hex[:12]}.db")
        shutil.copyfile(pg_template, path)
        yield f"sqlite:///{path}"
        path.unlink(missing_ok=True)
        return
    name = f"kiln_t_{uuid.uuid4().hex[:12]}"
    with _admin_conn() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield _pg_url(name)
    with _admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix on the real Redis that no other test uses; its keys are removed after."""
    prefix = f"kt{uuid.uuid4().hex[:10]}"
    yield prefix
    r = redis.Redis.from_url(REDIS_URL)
    keys_ = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys_:
        r.delete(*keys_)
    r.close()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(REDIS_URL)
    yield r
    r.close()


@pytest.fixture
def settings(tmp_path: Path, pg_url: str, redis_prefix: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=pg_url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        bootstrap_admin_key=ADMIN_KEY,
        request_timeout_s=20,
        claim_idle_ms=1000,
        claim_interval_ms=200,
        key_cache_ttl_s=0.5,
        version_cache_ttl_s=0.2,
    )


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    db_engine = make_db_engine(settings.resolved_database_url)
    yield Registry(make_sessionmaker(db_engine), BlobStore(settings.blob_dir))
    db_engine.dispose()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in-process (lifespan run), called through httpx's ASGI transport."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://kiln",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30,
        ) as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


def make_key(settings: Settings, scopes: list[str], tenant: str | None = None) -> str:
    db_engine = make_db_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(db_engine)
    tenant_id = Registry(sessions, BlobStore(settings.blob_dir)).ensure_tenant(
        tenant or settings.default_tenant
    )
    _row, secret = keys.create_key(sessions, tenant_id, scopes)
    db_engine.dispose()
    return secret


class WorkerThread:
    """A real Worker running its loop in a thread, with its own metrics registry."""

    def __init__(self, settings: Settings) -> None:
        self.metrics_registry = CollectorRegistry()
        db_engine = make_db_engine(settings.resolved_database_url)
        self._db_engine = db_engine
        blobs = BlobStore(settings.blob_dir)
        self.worker = Worker(
            redis.Redis.from_url(settings.resolved_redis_url),
            RedisKeys(settings.redis_prefix),
            Registry(make_sessionmaker(db_engine), blobs),
            blobs,
            WorkerConfig(
                claim_idle_ms=settings.claim_idle_ms,
                claim_interval_ms=settings.claim_interval_ms,
                max_deliveries=settings.max_deliveries,
                threads=1,
            ),
            WorkerMetrics(self.metrics_registry),
        )
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def start(self) -> WorkerThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(10)
        self._db_engine.dispose()

    def sample(self, name: str) -> float:
        total = 0.0
        for metric in self.metrics_registry.collect():
            for s in metric.samples:
                if s.name == name:
                    total += s.value
        return total


@pytest.fixture
def worker(settings: Settings) -> Iterator[WorkerThread]:
    w = WorkerThread(settings).start()
    yield w
    w.stop()
