"""Management API: models, versions (multipart upload), aliases. Thin: parse, call the registry."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Annotated, TypeVar

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from model_store.db import ModelRow, ModelVersionRow
from model_store.formats import FORMATS
from model_store.names import check_alias, parse_version_ref
from model_store.signature import Signature, VersionConfig
from service.deps import ManagePrincipal, RegistryDep, SettingsDep, StateDep
from service.errors import PayloadTooLarge, Unprocessable
from service.schemas import (
    AliasPublic,
    AliasSet,
    ModelCreate,
    ModelList,
    ModelPublic,
    VersionPublic,
)
from service.tenancy import access

router = APIRouter(prefix="/v1/models", tags=["models"])
M = TypeVar("M", Signature, VersionConfig)
_CHUNK = 1 << 20


def _model_public(registry: RegistryDep, row: ModelRow) -> ModelPublic:
    return ModelPublic(
        name=row.name,
        description=row.description,
        created_at=row.created_at,
        versions=[v.version for v in registry.list_versions(row.id)],
        aliases=registry.aliases(row.id),
    )


def _version_public(model: str, row: ModelVersionRow) -> VersionPublic:
    return VersionPublic(
        model=model,
        version=row.version,
        format=row.format,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        signature=Signature.model_validate(row.signature),
        config=VersionConfig.model_validate(row.config),
        lineage=row.lineage,
        created_at=row.created_at,
    )


@router.post("", status_code=201, response_model=ModelPublic)
async def create_model(body: ModelCreate, principal: ManagePrincipal, registry: RegistryDep) -> ModelPublic:
    access.check_model(principal, body.name)
    row = await run_in_threadpool(registry.create_model, principal.tenant_id, body.name, body.description)
    return ModelPublic(name=row.name, description=row.description, created_at=row.created_at)


@router.get("", response_model=ModelList)
async def list_models(principal: ManagePrincipal, registry: RegistryDep) -> ModelList:
    def load() -> ModelList:
        rows = [r for r in registry.list_models(principal.tenant_id) if principal.may_use(r.name)]
        return ModelList(data=[_model_public(registry, r) for r in rows])

    return await run_in_threadpool(load)


@router.get("/{name}", response_model=ModelPublic)
async def get_model(name: str, principal: ManagePrincipal, registry: RegistryDep) -> ModelPublic:
    def load() -> ModelPublic:
        return _model_public(registry, registry.get_model(principal.tenant_id, name))

    return await run_in_threadpool(load)


def _parse_json_field(model: type[M], raw: str | None, field: str) -> M | None:
    if raw is None or raw == "":
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        raise Unprocessable(f"{field}: {loc + ': ' if loc else ''}{first.get('msg')}") from exc


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(_CHUNK):
        yield chunk


@router.post("/{name}/versions", status_code=201, response_model=VersionPublic)
async def create_version(
    name: str,
    request: Request,
    principal: ManagePrincipal,
    state: StateDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="the model artifact")],
    format: Annotated[str, Form(description="onnx | torchscript")],
    signature: Annotated[str | None, Form(description="JSON signature")] = None,
    config: Annotated[str | None, Form(description="JSON serving config")] = None,
    create: Annotated[
        bool, Form(description="create the model with this version if it does not exist (atomic)")
    ] = False,
    description: Annotated[str, Form(max_length=4096, description="the created model's")] = "",
) -> VersionPublic:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes + (1 << 20):
        raise PayloadTooLarge("upload is over the size limit")
    if format not in FORMATS:
        raise Unprocessable(f"format must be one of {', '.join(FORMATS)}")
    sig = _parse_json_field(Signature, signature, "signature")
    cfg = _parse_json_field(VersionConfig, config, "config") or VersionConfig()
    registry = state.registry
    if not create:
        await run_in_threadpool(registry.get_model, principal.tenant_id, name)
    tmp, sha, size = await state.blobs.receive(_chunks(file), settings.max_upload_bytes)
    add = functools.partial(registry.add_version, create=description if create else None)
    row = await run_in_threadpool(add, principal.tenant_id, name, format, tmp, sha, size, sig, cfg)
    state.inference.resolver.forget_model(principal.tenant_id, name)
    return _version_public(name, row)


@router.get("/{name}/versions/{version}", response_model=VersionPublic)
async def get_version(
    name: str, version: str, principal: ManagePrincipal, registry: RegistryDep
) -> VersionPublic:
    ref = parse_version_ref(version)

    def load() -> VersionPublic:
        resolved = registry.resolve(principal.tenant_id, name, ref)
        model = registry.get_model(principal.tenant_id, name)
        row = next(v for v in registry.list_versions(model.id) if v.id == resolved.version_id)
        return _version_public(name, row)

    return await run_in_threadpool(load)


@router.put("/{name}/aliases/{alias}", response_model=AliasPublic)
async def set_alias(
    name: str, alias: str, body: AliasSet, principal: ManagePrincipal, state: StateDep
) -> AliasPublic:
    check_alias(alias)
    await run_in_threadpool(state.registry.set_alias, principal.tenant_id, name, alias, body.version)
    state.inference.resolver.forget_model(principal.tenant_id, name)  # this process: at once
    return AliasPublic(model=name, alias=alias, version=body.version)
