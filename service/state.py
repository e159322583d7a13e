"""Everything the app holds for its lifetime, built once in the app factory's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from model_store.blobs import BlobStore
from model_store.registry import Registry
from service.catalog import ModelCatalog
from service.checks import WorkerChecks
from service.inference.async_jobs import AsyncInference
from service.inference.repository import ModelRepository
from service.inference.sync import InferenceService
from service.settings import Settings
from service.tenancy.auth import Authenticator
from service.tenancy.key_admin import KeyAdmin
from service.text.generation import TextService
from workers.contract.messages import EngineClient


@dataclass
class AppState:
    settings: Settings
    db_engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    registry: Registry
    auth: Authenticator
    engine: EngineClient  # the one boundary to GPU work (workers/contract/messages.py)
    inference: InferenceService
    async_inference: AsyncInference
    repository: ModelRepository
    catalog: ModelCatalog
    key_admin: KeyAdmin
    text: TextService  # chat completions, completions, embeddings (service/text/)
    checks: WorkerChecks | None = None  # model checks a worker runs for this gateway (service/checks.py)
