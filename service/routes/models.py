"""Management API: models, versions (multipart upload), aliases. Thin: parse, call the catalog
(service/catalog.py)."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from pydantic import ValidationError

from model_store.formats import FORMATS
from model_store.names import check_alias, parse_version_ref
from model_store.signature import Signature, VersionConfig
from service.deps import ManagePrincipal, ModelReaderPrincipal, SettingsDep, StateDep
from service.downloads import version_response
from service.errors import PayloadTooLarge, Unprocessable
from service.schemas import AliasPublic, AliasSet, ModelCreate, ModelList, ModelPublic, VersionPublic

router = APIRouter(prefix="/v1/models", tags=["models"])
M = TypeVar("M", Signature, VersionConfig)


@router.post("", status_code=201, response_model=ModelPublic)
async def create_model(body: ModelCreate, principal: ManagePrincipal, state: StateDep) -> ModelPublic:
    return await state.catalog.create_model(principal, body.name, body.description)


@router.get("", response_model=ModelList)
async def list_models(principal: ModelReaderPrincipal, state: StateDep) -> ModelList:
    return await state.catalog.list_models(principal)


@router.get("/{name}", response_model=ModelPublic)
async def get_model(name: str, principal: ModelReaderPrincipal, state: StateDep) -> ModelPublic:
    return await state.catalog.get_model(principal.tenant_id, name)


def _parse_json_field(model: type[M], raw: str | None, field: str) -> M | None:
    if raw is None or raw == "":
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        raise Unprocessable(f"{field}: {loc + ': ' if loc else ''}{first.get('msg')}") from exc


@router.post("/{name}/versions", status_code=201, response_model=VersionPublic)
async def create_version(
    name: str,
    request: Request,
    principal: ManagePrincipal,
    state: StateDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="the model artifact")],
    format: Annotated[str, Form(description="onnx | torchscript | hf-encoder | hf-causal-lm")],
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
    created = description if create else None
    return await state.catalog.add_version(principal.tenant_id, name, file, format, sig, cfg, created)


@router.get("/{name}/versions/{version}", response_model=VersionPublic)
async def get_version(name: str, version: str, principal: ManagePrincipal, state: StateDep) -> VersionPublic:
    return await state.catalog.get_version(principal.tenant_id, name, parse_version_ref(version))


@router.get("/{name}/versions/{version}/content")
async def version_content(name: str, version: str, principal: ManagePrincipal, state: StateDep) -> Response:
    """The version's artifact, streamed (the owner's only: a model shared with this tenant is
    not theirs to download)."""
    resolved = await state.catalog.own_version(principal.tenant_id, name, parse_version_ref(version))
    return await version_response(state.blobs, resolved)


@router.put("/{name}/aliases/{alias}", response_model=AliasPublic)
async def set_alias(
    name: str, alias: str, body: AliasSet, principal: ManagePrincipal, state: StateDep
) -> AliasPublic:
    check_alias(alias)
    return await state.catalog.set_alias(principal.tenant_id, name, alias, body.version)
