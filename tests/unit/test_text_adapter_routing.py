"""The gateway's resolution of a lora-adapter on the text routes (service/text/generation.py):
the adapter is resolved as the caller's (visibility is the adapter's own), its base looked up by
id through the same TTL cache; wrong bases are 400, a missing base a 404, never a 500."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from model_store import errors as store_errors
from model_store.registry import ResolvedVersion
from model_store.signature import Signature, TensorSpec, VersionConfig
from service.errors import InvalidInput, NotFound
from service.inference.versions import VersionResolver
from service.tenancy.api_keys import Principal
from service.text.generation import TextService

SPEC = (TensorSpec(name="text", datatype="BYTES", shape=(-1,)),)
SIG = Signature(inputs=SPEC, outputs=SPEC)


def _v(vid: int, name: str, fmt: str, tenant: int = 1, adapter_of: int | None = None) -> ResolvedVersion:
    return ResolvedVersion(
        vid, tenant, name, 1, fmt, f"{vid:064x}", SIG, VersionConfig(), adapter_of=adapter_of
    )


class FakeRegistry:
    """Tenant 1 owns everything; tenant 2 sees nothing (a private model: NotFound)."""

    def __init__(self) -> None:
        self.by_name = {
            "chat": _v(1, "chat", "hf-causal-lm"),
            "enc": _v(2, "enc", "hf-encoder"),
            "lora": _v(3, "lora", "lora-adapter", adapter_of=1),
            "enc-lora": _v(4, "enc-lora", "lora-adapter", adapter_of=2),
            "orphan": _v(5, "orphan", "lora-adapter", adapter_of=77),
        }
        self.calls: list[Any] = []

    def resolve(self, tenant_id: int, name: str, ref: Any) -> ResolvedVersion:
        self.calls.append(("resolve", tenant_id, name))
        if tenant_id != 1 or name not in self.by_name:
            raise store_errors.NotFound(f"model {name!r} not found")
        return self.by_name[name]

    def by_version_id(self, vid: int) -> ResolvedVersion:
        self.calls.append(("id", vid))
        for v in self.by_name.values():
            if v.version_id == vid:
                return v
        raise store_errors.NotFound("model version not found")


def _service(reg: FakeRegistry) -> TextService:
    svc = TextService.__new__(TextService)
    svc.resolver = VersionResolver(reg, ttl_s=60)  # type: ignore[arg-type]
    return svc


def _who(tenant: int, models: frozenset[str] | None = None) -> Principal:
    return Principal(
        key_id=1, tenant_id=tenant, scopes=frozenset({"infer"}), prefix="k", allowed_models=models
    )


async def test_an_adapter_runs_on_its_base_and_the_base_lookup_is_cached() -> None:
    reg = FakeRegistry()
    svc = _service(reg)
    for _ in range(3):
        served, adapter = await svc.resolve_generation(_who(1), "lora", "/v1/chat/completions")
        assert served.version_id == 1 and adapter is not None and adapter.version_id == 3
    assert reg.calls == [("resolve", 1, "lora"), ("id", 1)]
    served, adapter = await svc.resolve_generation(_who(1), "chat", "/v1/chat/completions")
    assert served.version_id == 1 and adapter is None


async def test_wrong_or_missing_bases_and_other_tenants() -> None:
    svc = _service(FakeRegistry())
    with pytest.raises(InvalidInput, match="hf-encoder"):
        await svc.resolve_generation(_who(1), "enc-lora", "/v1/completions")
    with pytest.raises(InvalidInput, match="hf-encoder"):
        await svc.resolve_generation(_who(1), "enc", "/v1/completions")
    with pytest.raises(NotFound, match="base model"):
        await svc.resolve_generation(_who(1), "orphan", "/v1/completions")
    with pytest.raises(store_errors.NotFound):  # another tenant: the 404 of any private model
        await svc.resolve_generation(_who(2), "lora", "/v1/completions")
    with pytest.raises(Exception, match="may not use"):  # the key's allowlist names the adapter
        await svc.resolve_generation(_who(1, frozenset({"chat"})), "lora", "/v1/completions")


class FakeEngine:
    def __init__(self) -> None:
        self.commands: list[tuple[list[int], str]] = []

    async def command_lifecycle(self, ids: list[int], action: str) -> None:
        self.commands.append((ids, action))

    async def worker_infos(self) -> list[dict[str, Any]]:
        return []  # no worker ever reports an adapter loaded: load must not wait for one


async def test_loading_an_adapter_answers_at_once() -> None:
    from service.inference.repository import ModelRepository

    reg, engine = FakeRegistry(), FakeEngine()
    repo = ModelRepository(reg, VersionResolver(reg, 60), engine, wait_s=30.0)  # type: ignore[arg-type]
    await asyncio.wait_for(repo.load(1, "lora", None), timeout=2.0)
    assert engine.commands == [([3], "load")]  # clears an earlier unload of the adapter
