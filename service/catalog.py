"""The model catalog as the management API shows it: models, versions (uploads), aliases.

Each call runs its database work in one worker thread (never on the event loop), applies the
key's model allowlist (service/tenancy/access.py), and tells this process's version cache at
once when what a name resolves to changes (other gateways see it within the cache TTL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from model_store.blobs import BlobStore
from model_store.db import ModelRow, ModelVersionRow
from model_store.errors import NotFound
from model_store.registry import Registry, ResolvedVersion
from model_store.signature import Signature, VersionConfig
from service.inference.versions import VersionResolver
from service.schemas import AliasPublic, ModelList, ModelPublic, VersionPublic
from service.tenancy import access
from service.tenancy.api_keys import Principal

_CHUNK = 1 << 20


def _model_public(registry: Registry, row: ModelRow) -> ModelPublic:
    return ModelPublic(
        name=row.name,
        description=row.description,
        created_at=row.created_at,
        versions=[v.version for v in registry.list_versions(row.id)],
        aliases=registry.aliases(row.id),
    )


def version_public(model: str, row: ModelVersionRow) -> VersionPublic:
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


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(_CHUNK):
        yield chunk


class ModelCatalog:
    def __init__(
        self, registry: Registry, blobs: BlobStore, resolver: VersionResolver, max_upload: int
    ) -> None:
        self.registry = registry
        self.blobs = blobs
        self.resolver = resolver
        self.max_upload = max_upload

    async def create_model(self, principal: Principal, name: str, description: str) -> ModelPublic:
        access.check_model(principal, name)
        row = await run_in_threadpool(self.registry.create_model, principal.tenant_id, name, description)
        return ModelPublic(name=row.name, description=row.description, created_at=row.created_at)

    async def list_models(self, principal: Principal) -> ModelList:
        """The tenant's models that the key's allowlist admits."""
        return await run_in_threadpool(self._list_models, principal)

    def _list_models(self, principal: Principal) -> ModelList:
        rows = self.registry.list_models(principal.tenant_id)
        return ModelList(
            data=[_model_public(self.registry, r) for r in rows if access.may_use(principal, r.name)]
        )

    async def get_model(self, tenant_id: int, name: str) -> ModelPublic:
        return await run_in_threadpool(self._get_model, tenant_id, name)

    def _get_model(self, tenant_id: int, name: str) -> ModelPublic:
        return _model_public(self.registry, self.registry.get_model(tenant_id, name))

    async def add_version(
        self,
        tenant_id: int,
        name: str,
        upload: UploadFile,
        fmt: str,
        sig: Signature | None,
        cfg: VersionConfig,
        create: str | None,
    ) -> VersionPublic:
        """Receive the upload (refused past the size limit), check it, add it as the next version;
        with `create` (the new model's description) the model is created with it, atomically,
        if it does not exist (NotFound otherwise, before any byte is received)."""
        if create is None:
            await run_in_threadpool(self.registry.get_model, tenant_id, name)
        tmp, sha, size = await self.blobs.receive(_chunks(upload), self.max_upload)
        row = await run_in_threadpool(
            self._add_version, tenant_id, name, fmt, (tmp, sha, size), sig, cfg, create
        )
        self.resolver.forget_model(tenant_id, name)
        return version_public(name, row)

    def _add_version(
        self,
        tenant_id: int,
        name: str,
        fmt: str,
        received: tuple[Path, str, int],
        sig: Signature | None,
        cfg: VersionConfig,
        create: str | None,
    ) -> ModelVersionRow:
        return self.registry.add_version(tenant_id, name, fmt, *received, sig, cfg, create=create)

    async def get_version(self, tenant_id: int, name: str, ref: int | str) -> VersionPublic:
        return await run_in_threadpool(self._get_version, tenant_id, name, ref)

    def _get_version(self, tenant_id: int, name: str, ref: int | str) -> VersionPublic:
        resolved = self.registry.resolve(tenant_id, name, ref)
        model = self.registry.get_model(tenant_id, name)
        row = next(v for v in self.registry.list_versions(model.id) if v.id == resolved.version_id)
        return version_public(name, row)

    async def own_version(self, tenant_id: int, name: str, ref: int | str) -> ResolvedVersion:
        """A version of one of this tenant's own models (NotFound for one only shared with it)."""
        resolved = await run_in_threadpool(self.registry.resolve, tenant_id, name, ref)
        if resolved.tenant_id != tenant_id:
            raise NotFound(f"model {name!r} not found")
        return resolved

    async def set_alias(self, tenant_id: int, name: str, alias: str, version: int) -> AliasPublic:
        await run_in_threadpool(self.registry.set_alias, tenant_id, name, alias, version)
        self.resolver.forget_model(tenant_id, name)  # this process: at once
        return AliasPublic(model=name, alias=alias, version=version)
