"""The OIP model repository extension: index, load, unload; readiness, metadata and config per
version.

A version is ready when a ready worker reports it loaded (and so warmed up); an hf-causal-lm
version, when the generation loop of a ready worker hosts it. Load and unload
are commands left in Redis for every worker (workers/inference/lifecycle.py); the calls wait, as
Triton's do, until the workers have acted or the time runs out.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.concurrency import run_in_threadpool

from model_store.formats import ADAPTER_FORMAT
from model_store.registry import Registry
from service.errors import NotReady, Unavailable, Unprocessable
from service.inference.oip import model_config, model_metadata
from service.inference.versions import VersionResolver
from service.tenancy import access
from service.tenancy.api_keys import Principal
from workers.contract.messages import EngineClient


class ModelRepository:
    """Engine errors (queue unavailable) propagate as EngineError: service/errors.py maps them."""

    def __init__(
        self, registry: Registry, resolver: VersionResolver, engine: EngineClient, wait_s: float
    ) -> None:
        self.registry = registry
        self.resolver = resolver
        self.engine = engine
        self.wait_s = wait_s

    async def _loaded(self) -> tuple[set[int], dict[int, str]]:
        """Versions loaded on some ready worker (by its inference loop, or by the generation loop
        beside it while that loop turns: an hf-causal-lm version); load failures any worker reports."""
        infos = await self.engine.worker_infos()
        loaded: set[int] = set()
        failed: dict[int, str] = {}
        for info in infos:
            if info.get("ready", True):
                loaded.update(int(v) for v in info.get("loaded", []))
                if info.get("generation_alive", True):
                    loaded.update(int(v) for v in info.get("generation", []))
            failed.update({int(k): str(v) for k, v in (info.get("failed") or {}).items()})
        return loaded, failed

    async def version_ready(self, version_id: int) -> bool:
        loaded, _failed = await self._loaded()
        return version_id in loaded

    async def ready(self, tenant_id: int, model: str, ref: str | None) -> dict[str, Any]:
        """The OIP readiness body; NotReady (OIP: a 4xx, as Triton's 400) when no ready worker
        has the version loaded."""
        resolved = await self.resolver.resolve(tenant_id, model, ref)
        if not await self.version_ready(resolved.version_id):
            raise NotReady(f"version {resolved.version} of model {resolved.model!r} is not ready")
        return {"name": resolved.model, "version": str(resolved.version), "ready": True}

    async def metadata(self, tenant_id: int, model: str, ref: str | None) -> dict[str, object]:
        """OIP model metadata of the version `ref` names (the default version: None)."""
        resolved = await self.resolver.resolve(tenant_id, model, ref)
        versions = await run_in_threadpool(self._visible_versions, tenant_id, model)
        return model_metadata(resolved, versions)

    async def config(self, tenant_id: int, model: str, ref: str | None) -> dict[str, object]:
        """The serving config of the version `ref` names."""
        return model_config(await self.resolver.resolve(tenant_id, model, ref))

    def _visible_versions(self, tenant_id: int, model: str) -> list[int]:
        row = self.registry.get_visible_model(tenant_id, model)
        return [v.version for v in self.registry.list_versions(row.id)]

    async def index_allowed(self, principal: Principal) -> list[dict[str, Any]]:
        """The index, limited to the models the key's allowlist admits."""
        return [m for m in await self.index(principal.tenant_id) if access.may_use(principal, m["name"])]

    async def index(self, tenant_id: int) -> list[dict[str, Any]]:
        loaded, failed = await self._loaded()
        commands = await self.engine.lifecycle_commands()
        rows = await run_in_threadpool(self._versions, tenant_id)
        out = []
        for name, version, vid in rows:
            state, reason = "UNAVAILABLE", "not loaded (loads on first request)"
            if vid in loaded:
                state, reason = "READY", ""
            elif commands.get(vid, "").startswith("unload"):
                reason = "unloaded"
            elif vid in failed:
                reason = failed[vid]
            out.append({"name": name, "version": str(version), "state": state, "reason": reason})
        return out

    def _version_ids(self, tenant_id: int, model: str) -> list[int]:
        return [v.id for v in self.registry.list_versions(self.registry.get_model(tenant_id, model).id)]

    def _versions(self, tenant_id: int) -> list[tuple[str, int, int]]:
        return [
            (m.name, v.version, v.id)
            for m in self.registry.list_models(tenant_id)
            for v in self.registry.list_versions(m.id)
        ]

    async def load(self, tenant_id: int, model: str, ref: str | None) -> None:
        version = await self.resolver.resolve(tenant_id, model, ref)
        await self.engine.command_lifecycle([version.version_id], "load")
        if version.format == ADAPTER_FORMAT and version.adapter_of is not None:
            base = await self.resolver.by_id(version.adapter_of)
            if base.format == "hf-causal-lm":  # no stream of its own: put on its base at first use
                return
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline:
            loaded, failed = await self._loaded()
            if version.version_id in loaded:
                return
            if version.version_id in failed:
                raise Unprocessable(f"load failed: {failed[version.version_id]}")
            await asyncio.sleep(0.05)
        raise Unavailable("no worker loaded the model in time", retry_after=5)

    async def unload(self, tenant_id: int, model: str) -> None:
        ids = await run_in_threadpool(self._version_ids, tenant_id, model)
        if not ids:
            return
        await self.engine.command_lifecycle(ids, "unload")
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline:
            loaded, _failed = await self._loaded()
            if not loaded.intersection(ids):
                return
            await asyncio.sleep(0.05)
        raise Unavailable("workers did not unload the model in time (requests still queued?)", retry_after=5)
