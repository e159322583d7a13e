"""The OIP model repository extension: index, load, unload; and readiness per version.

A version is ready when a ready worker reports it loaded (and so warmed up). Load and unload
are commands left in Redis for every worker (workers/inference/lifecycle.py); the calls wait, as
Triton's do, until the workers have acted or the time runs out.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from model_store.registry import Registry
from service.errors import Unavailable, Unprocessable
from service.inference.versions import VersionResolver
from workers.contract.client import StreamsEngineClient
from workers.contract.redis_keys import Keys


class ModelRepository:
    def __init__(
        self,
        registry: Registry,
        resolver: VersionResolver,
        engine: StreamsEngineClient,
        keys: Keys,
        wait_s: float,
    ) -> None:
        self.registry = registry
        self.resolver = resolver
        self.engine = engine
        self.keys = keys
        self.wait_s = wait_s

    async def _loaded(self) -> tuple[set[int], dict[int, str]]:
        """Versions loaded on some ready worker; load failures any worker reports."""
        try:
            infos = await self.engine.worker_infos()
        except (RedisError, OSError) as exc:
            raise Unavailable("inference queue is unavailable", retry_after=1) from exc
        loaded: set[int] = set()
        failed: dict[int, str] = {}
        for info in infos:
            if info.get("ready", True):
                loaded.update(int(v) for v in info.get("loaded", []))
            failed.update({int(k): str(v) for k, v in (info.get("failed") or {}).items()})
        return loaded, failed

    async def version_ready(self, version_id: int) -> bool:
        loaded, _failed = await self._loaded()
        return version_id in loaded

    async def index(self, tenant_id: int) -> list[dict[str, Any]]:
        loaded, failed = await self._loaded()
        commands = await self._commands()
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

    def _versions(self, tenant_id: int) -> list[tuple[str, int, int]]:
        return [
            (m.name, v.version, v.id)
            for m in self.registry.list_models(tenant_id)
            for v in self.registry.list_versions(m.id)
        ]

    async def _commands(self) -> dict[int, str]:
        try:
            raw: Any = await self.engine.redis.hgetall(self.keys.lifecycle)
        except (RedisError, OSError) as exc:
            raise Unavailable("inference queue is unavailable", retry_after=1) from exc
        return {int(k): v.decode() for k, v in (raw or {}).items()}

    async def _command(self, version_ids: list[int], action: str) -> None:
        nonce = uuid.uuid4().hex[:12]
        try:
            await self.engine.redis.hset(
                self.keys.lifecycle, mapping={str(v): f"{action}:{nonce}" for v in version_ids}
            )
        except (RedisError, OSError) as exc:
            raise Unavailable("inference queue is unavailable", retry_after=1) from exc

    async def load(self, tenant_id: int, model: str, ref: str | None) -> None:
        version = await self.resolver.resolve(tenant_id, model, ref)
        await self._command([version.version_id], "load")
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
        row = await run_in_threadpool(self.registry.get_model, tenant_id, model)
        ids = [v.id for v in await run_in_threadpool(self.registry.list_versions, row.id)]
        if not ids:
            return
        await self._command(ids, "unload")
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline:
            loaded, _failed = await self._loaded()
            if not loaded.intersection(ids):
                return
            await asyncio.sleep(0.05)
        raise Unavailable("workers did not unload the model in time (requests still queued?)", retry_after=5)
