"""The generation backends a worker holds: version id -> a loaded hf-causal-lm backend,
loaded on first use on a load thread through a pluggable loader (the engine's factory in production, a test
backend in tests), unloaded on the lifecycle's unload command once its requests are done."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from model_store.blobs import BlobStore
from model_store.errors import StoreError, public_message
from model_store.registry import Registry, ResolvedVersion
from workers.contract.generation import GenErrorCode
from workers.generation.adapter_source import AdapterSource
from workers.generation.backend import GenerationBackend
from workers.generation.metrics import GenMetrics

log = logging.getLogger("kiln.generation")

FORMAT = "hf-causal-lm"
BackendLoader = Callable[[ResolvedVersion, Path], GenerationBackend]
LoadResult = Future[tuple[ResolvedVersion, GenerationBackend, float]]
RETRY_LOAD_S = 10.0  # a version that failed to load is not tried again before this


class LoadFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Hosted:
    version: ResolvedVersion
    backend: GenerationBackend
    running: set[str] = field(default_factory=set)  # request ids admitted to it


class GenBackends:
    def __init__(
        self,
        registry: Registry,
        blobs: BlobStore,
        loader: BackendLoader,
        metrics: GenMetrics,
        unloaded: set[int],
    ) -> None:
        self.registry = registry
        self.blobs = blobs
        self.loader = loader
        self.metrics = metrics
        self.unloaded = unloaded  # unloaded by command (lifecycle): not loaded on demand
        self.adapters = AdapterSource(registry, blobs, unloaded)  # LoRA adapters' bytes, for requests
        self.hosted: dict[int, Hosted] = {}
        self.failures: dict[int, tuple[str, float]] = {}  # version -> (why, monotonic retry time)
        self.to_unload: set[int] = set()
        self._loading: dict[int, LoadResult] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="kiln-gen-load")

    def get(self, version_id: int) -> Hosted | None:
        """The version's backend; None while it loads (on the load thread, so that the loop
        goes on streaming and cancelling meanwhile); LoadFailed if it cannot be loaded."""
        hosted = self.hosted.get(version_id)
        if hosted is not None:
            return hosted
        if version_id in self.unloaded:
            raise LoadFailed(GenErrorCode.UNAVAILABLE, "this model version is unloaded; load it first")
        why, retry_at = self.failures.get(version_id, ("", 0.0))
        if why and time.monotonic() < retry_at:
            raise LoadFailed(GenErrorCode.LOAD_FAILED, why)
        loading = self._loading.get(version_id)
        if loading is None:
            self._start_load(version_id)
            return None
        if not loading.done():
            return None
        del self._loading[version_id]
        return self._loaded(version_id, loading)

    def _start_load(self, version_id: int) -> None:
        try:
            version = self.registry.by_version_id(version_id)
        except StoreError as exc:
            raise LoadFailed(GenErrorCode.LOAD_FAILED, f"model version not found: {exc}") from exc
        if version.format == "lora-adapter":
            raise LoadFailed(
                GenErrorCode.INVALID_INPUT, "a lora-adapter is served on its base model's stream"
            )
        if version.format != FORMAT:
            raise LoadFailed(GenErrorCode.INVALID_INPUT, f"a {version.format} model does not generate text")
        path = self.blobs.path_for(version.sha256)
        self._loading[version_id] = self._pool.submit(self._load, version, path)

    def _load(self, version: ResolvedVersion, path: Path) -> tuple[ResolvedVersion, GenerationBackend, float]:
        started = time.monotonic()
        return version, self.loader(version, path), time.monotonic() - started

    def _loaded(self, version_id: int, loading: LoadResult) -> Hosted:
        try:
            version, backend, took = loading.result()
        except Exception as exc:  # the loader's failure is the version's, never the loop's
            why = f"model could not be loaded: {public_message(exc)}"
            self.failures[version_id] = (why, time.monotonic() + RETRY_LOAD_S)
            log.error("load of generation version %s failed: %s", version_id, type(exc).__name__)
            raise LoadFailed(GenErrorCode.LOAD_FAILED, why) from exc
        self.failures.pop(version_id, None)
        hosted = self.hosted[version_id] = Hosted(version, backend)
        self.metrics.loaded.set(len(self.hosted))
        log.info("loaded %s:%s for generation in %.1fs", version.model, version.version, took)
        return hosted

    def drop(self, version_id: int, why: str = "") -> None:
        """Close and forget a version's backend now (its requests must be ended by the caller)."""
        hosted = self.hosted.pop(version_id, None)
        self.to_unload.discard(version_id)
        if hosted is None:
            return
        if why:
            self.failures[version_id] = (why, time.monotonic() + RETRY_LOAD_S)
        try:
            hosted.backend.close()
        except Exception as exc:
            log.warning("closing generation version %s failed: %s", version_id, type(exc).__name__)
        self.metrics.forget(hosted.version.model, hosted.version.version)
        self.metrics.loaded.set(len(self.hosted))
        log.info("unloaded generation version %s", version_id)

    def unload(self, version_id: int) -> None:
        """On the unload command: now if idle, else once its running requests are done."""
        self.to_unload.add(version_id)
        self.unload_idle()

    def unload_idle(self) -> None:
        for vid in list(self.to_unload):
            hosted = self.hosted.get(vid)
            if hosted is None or not hosted.running:
                self.drop(vid)

    def close(self) -> None:
        for vid in list(self.hosted):
            self.drop(vid)
        for loading in self._loading.values():  # a load that ends after this is closed at once
            loading.add_done_callback(_close_loaded)
        self._loading.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def loaded_ids(self) -> list[int]:
        return sorted(list(self.hosted))  # read from the heartbeat's thread too


def _close_loaded(loading: LoadResult) -> None:
    if not loading.cancelled() and loading.exception() is None:
        loading.result()[1].close()
