"""Named dependencies for routes.

Every dependency here is `async def`: FastAPI runs a plain `def` dependency in the threadpool,
which cost about 100 us per dependency per request on the inference path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from model_store.registry import Registry
from service.compress.service import CompressService
from service.errors import Forbidden, PayloadTooLarge
from service.finetune.jobs import FinetuneService
from service.finetune.sweeps import SweepService
from service.settings import Settings
from service.state import AppState
from service.tenancy import access
from service.tenancy.api_keys import Principal


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.kiln
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def _principal(request: Request, state: StateDep) -> Principal:
    return await state.auth.authenticate(request.headers.get("authorization"))


MODEL_PATH_PARAMS = ("model", "name")  # path parameters that name a model


def scoped(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency requiring `scope` (or one of "a|b"); on routes that name a model in the path
    ({model} on /v2, {name} on /v1/models) it also applies the key's model allowlist
    (service/access). The scope is recorded on the dependency (`kiln_scope`) for the route
    table tests."""
    alternatives = scope.split("|")

    async def dep(request: Request, principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        if not any(principal.has(s) for s in alternatives):
            raise Forbidden(f"this key lacks the {' or '.join(repr(s) for s in alternatives)} scope")
        for param in MODEL_PATH_PARAMS:
            model = request.path_params.get(param)
            if model is not None:
                access.check_model(principal, model)
        return principal

    dep.kiln_scope = scope  # type: ignore[attr-defined]
    return dep


InferPrincipal = Annotated[Principal, Depends(scoped("infer"))]
ManagePrincipal = Annotated[Principal, Depends(scoped("manage"))]
AdminPrincipal = Annotated[Principal, Depends(scoped("admin"))]
FinetunePrincipal = Annotated[Principal, Depends(scoped("finetune"))]
# reading the model list: management keys, and inference keys (OpenAI's clients list models first)
ModelReaderPrincipal = Annotated[Principal, Depends(scoped("infer|manage"))]


async def _registry(state: StateDep) -> Registry:
    return state.registry


async def _settings(state: StateDep) -> Settings:
    return state.settings


RegistryDep = Annotated[Registry, Depends(_registry)]
SettingsDep = Annotated[Settings, Depends(_settings)]


async def _finetune(state: StateDep) -> FinetuneService:
    return FinetuneService(state)


FinetuneDep = Annotated[FinetuneService, Depends(_finetune)]


async def _sweeps(state: StateDep) -> SweepService:
    return SweepService(FinetuneService(state))


SweepDep = Annotated[SweepService, Depends(_sweeps)]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes (checked before reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def _compress(state: StateDep) -> CompressService:
    return CompressService(state)


CompressDep = Annotated[CompressService, Depends(_compress)]
