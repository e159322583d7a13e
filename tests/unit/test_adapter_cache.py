"""The model cache's bookkeeping for LoRA adapter versions (workers/inference/model_cache.py): an
adapter goes with its base (unloaded, evicted, condemned), never keeps its base from serving, and
keeps its base recent in the memory budget's least-recently-used order."""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from model_store.hf_encoder import encoder_signature
from model_store.registry import ResolvedVersion
from model_store.signature import VersionConfig
from workers.inference.batcher import BatchPolicy
from workers.inference.config import WorkerConfig
from workers.inference.metrics import WorkerMetrics
from workers.inference.model_cache import Loaded, ModelCache
from workers.inference.runtime import AdapterRef

BASE, A1, A2, OTHER = 1, 2, 3, 4


class _Runner:
    device = "cpu"

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs


def _version(vid: int, fmt: str = "hf-encoder", base: int | None = None) -> ResolvedVersion:
    sig = encoder_signature(32)
    return ResolvedVersion(vid, 1, f"m{vid}", 1, fmt, "0" * 64, sig, VersionConfig(), adapter_of=base)


def _cache(waiting: dict[int, int] | None = None, budget: int = 0) -> ModelCache:
    queued = waiting or {}
    cache = ModelCache(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        WorkerConfig(memory_budget_bytes=budget),
        WorkerMetrics(CollectorRegistry()),
        None,  # type: ignore[arg-type]
        lambda vid: queued.get(vid, 0),
        lambda: None,
        set(),
    )
    policy = BatchPolicy(8, 0.001)
    runner: Any = _Runner()
    cache.models[BASE] = Loaded(_version(BASE), runner, policy, 100, 1.0, runners=[runner])
    cache.models[OTHER] = Loaded(_version(OTHER), runner, policy, 100, 5.0, runners=[runner])
    for vid, used in ((A1, 9.0), (A2, 2.0)):
        ref = AdapterRef(vid, b"x", 8)
        version = _version(vid, "lora-adapter", BASE)
        cache.models[vid] = Loaded(version, runner, policy, 10, used, adapter=ref, base_id=BASE)
    return cache


def test_a_base_goes_with_its_adapters_and_an_adapter_alone() -> None:
    cache = _cache()
    assert cache.unload(A1) and set(cache.models) == {BASE, A2, OTHER}
    assert cache.unload(BASE) and set(cache.models) == {OTHER}


def test_a_base_stays_while_requests_wait_for_one_of_its_adapters() -> None:
    cache = _cache(waiting={A2: 1})
    assert not cache.unload(BASE) and set(cache.models) == {BASE, A1, A2, OTHER}


def test_condemning_an_adapter_condemns_its_base_and_the_other_adapters() -> None:
    cache = _cache()
    assert cache.condemn(cache.models[A1], "model process died")
    assert all(cache.quarantine.condemned(v) for v in (BASE, A1, A2))
    assert not cache.quarantine.condemned(OTHER)
    assert cache.loaded_ids() == [OTHER]
    assert not cache.condemn(cache.models[A2], "again")  # once per load
    cache.unload_condemned()
    assert set(cache.models) == {OTHER}


def test_the_memory_budget_counts_a_base_as_used_when_its_adapters_are() -> None:
    cache = _cache(budget=230)  # 100 + 100 + 10 + 10 held: 30 more need 20 out
    cache._make_room(30, 99)
    # A2 (used at 2) goes, then OTHER (at 5), not BASE (used at 1, but its A1 at 9)
    assert set(cache.models) == {BASE, A1}
