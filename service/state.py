"""Everything the app holds for its lifetime, built once in the app factory's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from model_store.blobs import BlobStore
from model_store.registry import Registry
from service.checks import WorkerChecks
from service.inference.sync import InferenceService
from service.settings import Settings
from service.tenancy.auth import Authenticator
from workers.contract.client import StreamsEngineClient


@dataclass
class AppState:
    settings: Settings
    engine_db: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    registry: Registry
    auth: Authenticator
    engine: StreamsEngineClient
    inference: InferenceService
    checks: WorkerChecks | None = None  # model checks a worker runs for this gateway (service/checks.py)
