"""LoRA adapters through the worker's generation loop (real Redis and PostgreSQL, the real engine
in process): a request on the base's stream naming an adapter version gets the adapter's text,
charged under the adapter's name to the asking tenant; a reference the registry does not back (a
wrong digest, an adapter of another base) ends that request alone with an error chunk."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

import tests.conftest as base
from model_store.limits import ArtifactLimits
from model_store.registry import Registry
from model_store.signature import VersionConfig
from tests.causal_tiny import tiny_bundle
from tests.generation_backend import _any_check
from tests.integration.gen_helpers import GATEWAY, Replies, add_raw, running_loop, text
from tests.lora_tiny import adapter_bytes
from workers.common.causal_model import load_model
from workers.contract.generation import AdapterRef, GenErrorCode, GenParams, GenRequestMsg
from workers.contract.redis_keys import RedisKeys
from workers.contract.usage import day_of
from workers.generation.backend import GenerationBackend
from workers.generation.engine import EngineOptions
from workers.generation.fenced import GenLoadSettings, load_backend

pytest.importorskip("peft")
SETTINGS = GenLoadSettings(mode="off", options=EngineOptions(seed=0, max_adapters=2))


def _add(registry: Registry, tmp: Path, name: str, fmt: str, data: bytes, lineage: Any = None) -> Any:
    permissive = Registry(registry.sessions, registry.blobs, _any_check)
    tenant = permissive.ensure_tenant("default")
    if not permissive.has_model(tenant, name):
        permissive.create_model(tenant, name)
    upload = tmp / f"upload-{name}-{uuid.uuid4().hex[:6]}"
    upload.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    row = permissive.add_version(tenant, name, fmt, upload, sha, len(data), None, VersionConfig(), lineage)
    return int(row.id), sha


def _load(version: Any, path: Path) -> GenerationBackend:
    return load_backend(version, path, SETTINGS)


def _enqueue(r: redis.Redis, keys: RedisKeys, base_id: int, adapter: AdapterRef | None, model: str) -> str:
    rid, now = uuid.uuid4().hex, int(time.time() * 1000)
    msg = GenRequestMsg(
        rid, keys.reply_stream(GATEWAY), now + 60_000, now, 1, model, "completion", True,
        GenParams(max_tokens=8, temperature=0.0), prompt="the kiln said", key_id=7, adapter=adapter,
    )  # fmt: skip
    add_raw(r, keys, base_id, msg.to_fields())
    return rid


def test_adapter_requests_on_the_base_stream(
    redis_client: redis.Redis, registry: Registry, redis_prefix: str, tmp_path: Path
) -> None:
    keys = RedisKeys(redis_prefix)
    bundle = tiny_bundle("llama", seed=5)
    base_id, base_sha = _add(registry, tmp_path, "chat", "hf-causal-lm", bundle)
    (tmp_path / "base").write_bytes(bundle)
    model = load_model(tmp_path / "base", base_sha, "cpu", ArtifactLimits()).model
    one = adapter_bytes(model, seed=1)
    lora_id, lora_sha = _add(registry, tmp_path, "chat-lora", "lora-adapter", one, {"adapter_of": base_id})
    stray_id, stray_sha = _add(
        registry, tmp_path, "stray", "lora-adapter", adapter_bytes(model, 2), {"adapter_of": 0}
    )
    with running_loop(base.REDIS_URL, redis_prefix, registry, _load) as (loop, reg):
        replies = Replies(redis_client, keys)
        plain = _enqueue(redis_client, keys, base_id, None, "chat")
        tuned = _enqueue(redis_client, keys, base_id, AdapterRef(lora_id, lora_sha), "chat-lora")
        lying = _enqueue(redis_client, keys, base_id, AdapterRef(lora_id, "0" * 64), "chat-lora")
        stray = _enqueue(redis_client, keys, base_id, AdapterRef(stray_id, stray_sha), "stray")
        got = {rid: replies.until(rid, timeout=120) for rid in (plain, tuned, lying, stray)}
        time.sleep(0.3)  # a stats turn
        loop.commands.unloaded.add(lora_id)  # as an unload command of the adapter would
        off = replies.until(_enqueue(redis_client, keys, base_id, AdapterRef(lora_id, lora_sha), "chat-lora"))
        loaded = sum(
            s.value for m in reg.collect() for s in m.samples if s.name == "kiln_gen_lora_adapters_loaded"
        )
    assert got[plain][-1].finish == "length" and got[tuned][-1].finish == "length"
    assert text(got[tuned]) != text(got[plain])
    for rid in (lying, stray):
        assert got[rid][-1].finish == "error" and got[rid][-1].code == GenErrorCode.INVALID_INPUT
    assert loaded == 1
    assert off[-1].finish == "error" and off[-1].code == GenErrorCode.UNAVAILABLE
    day = redis_client.hgetall(keys.usage_day(1, day_of(time.time())))
    assert day[b"chat-lora|1|7|g"] == b"8" and day[b"chat|1|7|g"] == b"8"  # each charged as asked


def test_the_inference_loop_leaves_adapters_to_their_base(registry: Registry, tmp_path: Path) -> None:
    """An OIP call or a load command naming an adapter: refused as not the inference loop's (a
    400 that says where it is served), never recorded as a failed load."""
    from prometheus_client import CollectorRegistry

    from workers.contract.messages import ErrorCode
    from workers.inference.config import WorkerConfig
    from workers.inference.metrics import WorkerMetrics
    from workers.inference.model_cache import ModelCache
    from workers.inference.validation import ItemRejected
    from workers.inference.watchdog import Watchdog

    base, _ = _add(registry, tmp_path, "some-base", "hf-causal-lm", b"base bytes")
    vid, _sha = _add(registry, tmp_path, "some-lora", "lora-adapter", b"adapter bytes", {"adapter_of": base})
    watchdog = Watchdog(lambda _ready, _busy: None, lambda: None, 60.0)
    metrics = WorkerMetrics(CollectorRegistry())
    cache = ModelCache(
        registry, registry.blobs, WorkerConfig(), metrics, watchdog, lambda _v: 0, lambda: None, set()
    )
    with pytest.raises(ItemRejected) as refused:
        cache.get(vid)
    assert refused.value.code == ErrorCode.INVALID_INPUT and "chat/completions" in str(refused.value)
    assert vid not in cache.load_failures
