"""The model versions a worker holds: loading one (its instances started in fenced children
and warmed up), the memory budget (least-recently-used versions unloaded to make room),
unloading, and condemning a version whose model hung or died (workers/inference/quarantine.py).

A LoRA adapter version of an hf-encoder base (adapter_versions.py) has no instances of its own:
it is loaded on its base version's instances (the base is loaded first), shares their pool, and
goes when its base goes (unloaded, evicted or condemned)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from model_store.blobs import BlobStore
from model_store.errors import StoreError, public_message
from model_store.fence import FenceDied, FenceTimeout
from model_store.registry import Registry, ResolvedVersion
from workers.contract.errors import LoadError
from workers.contract.messages import ErrorCode
from workers.inference import memory
from workers.inference.adapter_versions import (
    ADAPTER_FORMAT,
    NotServedHere,
    attach,
    base_of,
    read_adapter_bytes,
)
from workers.inference.batcher import BatchPolicy
from workers.inference.config import WorkerConfig
from workers.inference.fenced import close_runners, fenced_of, load_runner
from workers.inference.instances import InstancePool
from workers.inference.lifecycle import lru_victims, measured, release_memory, warm
from workers.inference.metrics import WorkerMetrics
from workers.inference.quarantine import Quarantine
from workers.inference.runtime import AdapterRef, Runner
from workers.inference.validation import ItemRejected
from workers.inference.watchdog import Watchdog

log = logging.getLogger("kiln.worker")


TEXT_FORMATS = ("hf-causal-lm",)
TEXT_ONLY = "a text-generation model: call it on /v1/chat/completions or /v1/completions"


@dataclass(slots=True)
class Loaded:
    version: ResolvedVersion
    runner: Runner
    policy: BatchPolicy
    size_bytes: int = 0  # device memory it holds (CUDA), else its artifact size
    last_used: float = 0.0  # monotonic
    pool: InstancePool | None = None  # batches run on the pool's threads, one per instance
    runners: list[Runner] = field(default_factory=list)  # its own (none for an adapter)
    adapter: AdapterRef | None = None  # a LoRA adapter version, run on its base's instances
    base_id: int | None = None  # an adapter's base version (whose pool and runners it uses)

    def runner_here(self) -> Runner:
        return self.pool.current() if self.pool is not None else self.runner

    def has_capacity(self) -> bool:
        return self.pool is None or self.pool.has_capacity()


def batch_policy(version: ResolvedVersion) -> BatchPolicy:
    cfg = version.config
    batching = version.signature.batched() and cfg.max_batch_size > 1
    return BatchPolicy(
        cfg.max_batch_size if batching else 1, cfg.max_queue_delay_ms / 1000, cfg.preferred_batch_sizes
    )


class ModelCache:
    """Version id -> Loaded. `waiting(version_id)`: requests queued for it (never unloaded
    then); `changed()`: called when what is loaded changes, so the heartbeat says so."""

    def __init__(
        self,
        registry: Registry,
        blobs: BlobStore,
        config: WorkerConfig,
        metrics: WorkerMetrics,
        watchdog: Watchdog,
        waiting: Callable[[int], int],
        changed: Callable[[], None],
        unloaded: set[int],
    ) -> None:
        self.registry = registry
        self.blobs = blobs
        self.config = config
        self.metrics = metrics
        self.watchdog = watchdog
        self.models: dict[int, Loaded] = {}
        self.unloaded = unloaded  # unloaded by command (lifecycle.Commands): not loaded on demand
        self.load_failures: dict[int, str] = {}
        self.quarantine = Quarantine(config.hung_backoff_s)
        self._waiting = waiting
        self._changed = changed

    def get(self, version_id: int) -> Loaded:
        """The loaded version, loading it first if need be (ItemRejected if it cannot be)."""
        loaded = self.models.get(version_id)
        if loaded is not None and not self.quarantine.condemned(version_id):
            return loaded
        if version_id in self.unloaded:
            raise ItemRejected(ErrorCode.UNAVAILABLE, "this model version is unloaded; load it first")
        refused = self.quarantine.refusal(version_id)
        if refused is not None:
            raise ItemRejected(ErrorCode.UNAVAILABLE, f"this model version is unavailable: {refused}")
        started = time.monotonic()
        version = self._version(version_id)
        if version.format == ADAPTER_FORMAT:
            return self._load_adapter(version, started)
        runners, size, used = self._load_instances(version)
        self.load_failures.pop(version_id, None)
        self._make_room(size, version_id)
        pool = InstancePool(runners, f"kiln-v{version_id}")  # the loop never runs model code itself
        runner = runners[0]
        loaded = self.models[version_id] = Loaded(
            version, runner, batch_policy(version), size, time.monotonic(), pool, runners
        )
        self._loaded(loaded, started, used)
        return loaded

    def _loaded(self, loaded: Loaded, started: float, used: int | None) -> None:
        version = loaded.version
        self.metrics.load_duration.labels(version.model, str(version.version)).observe(
            time.monotonic() - started
        )
        self.metrics.loaded.set(len(self.models))
        self.metrics.version_loaded(version.model, version.version, loaded.runner.device, used)
        log.info("loaded %s:%s on %s", version.model, version.version, loaded.runner.device)
        self._changed()  # ready now: say so before the first answer goes out

    def _version(self, version_id: int) -> ResolvedVersion:
        try:
            version = self.registry.by_version_id(version_id)
        except StoreError as exc:
            raise self._failed(version_id, str(exc)) from exc
        if version.format in TEXT_FORMATS:  # the generation loop serves these (workers/generation)
            raise ItemRejected(ErrorCode.INVALID_INPUT, TEXT_ONLY)
        return version

    def _failed(self, version_id: int, why: str) -> ItemRejected:
        self.load_failures[version_id] = why[:300]
        log.error("load of version %s failed: %s", version_id, why)
        return ItemRejected(ErrorCode.LOAD_FAILED, f"model could not be loaded: {why}")

    def _load_adapter(self, version: ResolvedVersion, started: float) -> Loaded:
        """An adapter version on its base's instances (the base loaded first if need be)."""
        vid = version.version_id
        try:
            base_version = base_of(self.registry, version)
        except NotServedHere as exc:
            raise ItemRejected(ErrorCode.INVALID_INPUT, TEXT_ONLY) from exc
        except LoadError as exc:
            raise self._failed(vid, str(exc)) from exc
        if base_version.version_id in self.unloaded:
            raise ItemRejected(ErrorCode.UNAVAILABLE, "the base model version of this adapter is unloaded")
        try:
            base = self.get(base_version.version_id)
        except ItemRejected as exc:
            if exc.code == ErrorCode.LOAD_FAILED:  # the index says why the adapter did not load
                self.load_failures[vid] = f"its base version failed to load: {exc}"[:300]
            raise
        try:
            path = self.blobs.path_for(version.sha256)
            data = read_adapter_bytes(path, version, self.config.artifact_limits)
            ref = AdapterRef(vid, data, self.config.max_adapters)
            with self.watchdog.busy(float("inf")):
                attach(base.runners, ref, version)
        except (FenceDied, FenceTimeout) as exc:  # the base's process died or hung: it goes too
            self.condemn(base, f"model process failed while loading an adapter: {exc}")
            raise self._failed(vid, str(exc)) from exc
        except (StoreError, LoadError) as exc:
            raise self._failed(vid, str(exc)) from exc
        except Exception as exc:
            raise self._failed(vid, f"adapter warmup failed: {public_message(exc)}") from exc
        self.load_failures.pop(vid, None)
        self._make_room(len(data), vid, keep=base_version.version_id)
        loaded = self.models[vid] = Loaded(
            version,
            base.runner,
            batch_policy(version),  # its own batching; its instances and device are its base's
            size_bytes=len(data),
            last_used=time.monotonic(),
            pool=base.pool,
            adapter=ref,
            base_id=base_version.version_id,
        )
        self._loaded(loaded, started, None)
        return loaded

    def _start_instances(self, version: ResolvedVersion, runners: list[Runner]) -> None:
        cfg = self.config
        path = self.blobs.path_for(version.sha256)
        for _ in range(version.config.instances):
            runners.append(
                load_runner(
                    version, path, cfg.threads, cfg.fence, cfg.model_memory_bytes, cfg.artifact_limits
                )
            )
        for r in runners:
            warm(r, version.signature)

    def _load_instances(self, version: ResolvedVersion) -> tuple[list[Runner], int, int | None]:
        """Start and warm up the version's instances: (runners, bytes they count for in the
        memory budget, memory the load took as measured)."""
        version_id = version.version_id
        mem_before = memory.snapshot()
        cuda: list[int] = []
        runners: list[Runner] = []
        try:
            path = self.blobs.path_for(version.sha256)
            with self.watchdog.busy(float("inf")), measured(cuda):  # heartbeats go on during a long load
                self._start_instances(version, runners)
        except (StoreError, LoadError, FenceDied, FenceTimeout) as exc:
            close_runners(runners)
            self.load_failures[version_id] = str(exc)[:300]
            log.error("load of version %s failed: %s", version_id, exc)
            raise ItemRejected(ErrorCode.LOAD_FAILED, f"model could not be loaded: {exc}") from exc
        except Exception as exc:
            close_runners(runners)
            self.load_failures[version_id] = f"warmup failed: {public_message(exc)}"
            log.error("warmup of version %s failed: %s", version_id, type(exc).__name__)
            raise ItemRejected(ErrorCode.LOAD_FAILED, f"model warmup failed: {public_message(exc)}") from exc
        fenced = [f for f in (fenced_of(r) for r in runners) if f is not None]
        # what the load took: each child reports its own (resident, or CUDA), else this process's
        device = runners[0].device
        used = sum(f.memory_bytes for f in fenced) if fenced else memory.used_since(mem_before, device)
        if device.startswith("cuda"):  # the budget counts device memory on a GPU
            cuda = [used or 0] if fenced else cuda
        size = (cuda[0] if cuda else 0) or path.stat().st_size * len(runners)  # else artifact bytes
        return runners, size, used

    def _make_room(self, need: int, loading: int, keep: int | None = None) -> None:
        last = {vid: m.last_used for vid, m in self.models.items()}
        for m in list(self.models.values()):  # a base is as recently used as its adapters
            if m.base_id is not None and m.base_id in last:
                last[m.base_id] = max(last[m.base_id], m.last_used)
        sizes = {vid: (m.size_bytes, last[vid]) for vid, m in self.models.items()}
        busy = {vid for vid in self.models if self._waiting(vid)} | {loading, keep or loading}
        for vid in lru_victims(sizes, need, self.config.memory_budget_bytes, busy):
            self.unload(vid)

    def adapters_of(self, base_id: int) -> list[int]:
        """The adapter versions loaded on a base version's instances."""
        return [vid for vid, m in list(self.models.items()) if m.base_id == base_id]

    def unload(self, version_id: int) -> bool:
        """Drop a loaded version and free its memory (not while requests wait for it); a base
        goes with the adapters loaded on it (not while requests wait for one of them)."""
        loaded = self.models.get(version_id)
        if loaded is None or self._waiting(version_id):
            return False
        if loaded.base_id is not None:  # an adapter: its base's instances stay (it may be evicted there)
            self._drop(version_id)
            return True
        adapters = self.adapters_of(version_id)
        if any(self._waiting(a) for a in adapters) or (loaded.pool is not None and loaded.pool.inflight):
            return False
        for a in adapters:
            self._drop(a)
        self._drop(version_id)
        if loaded.pool is not None:
            loaded.pool.close()
        close_runners(loaded.runners)
        del loaded
        release_memory()
        return True

    def _drop(self, version_id: int) -> None:
        self.models.pop(version_id, None)
        self.quarantine.unloaded(version_id)
        self.metrics.loaded.set(len(self.models))
        log.info("unloaded version %s", version_id)
        self._changed()

    def condemn(self, loaded: Loaded, why: str) -> bool:
        """From a pool thread: kill the version's children now (True if this condemned it);
        the loop unloads it (unload_condemned). An adapter's children are its base's: the base
        and every adapter on it are condemned together."""
        base_id = loaded.base_id if loaded.base_id is not None else loaded.version.version_id
        base = self.models.get(base_id)
        group = [base_id, *self.adapters_of(base_id)]
        if loaded.version.version_id not in group:
            group.append(loaded.version.version_id)
        first = False
        for vid in group:
            if self.quarantine.condemn(vid, why):
                first = True
                log.error("version %s unloaded: %s", vid, why)
                self.load_failures[vid] = why
        if not first:
            return False
        close_runners(base.runners if base is not None else loaded.runners, kill=True)
        return True

    def unload_condemned(self) -> None:
        for vid in self.quarantine.pending():
            if vid not in self.models:
                self.quarantine.unloaded(vid)
            elif not self.unload(vid):  # its queued batches fail first (see execution.py)
                self._changed()

    def close(self) -> None:
        for loaded in list(self.models.values()):
            if loaded.base_id is not None:  # an adapter: its base's pool and runners
                continue
            if loaded.pool is not None:
                loaded.pool.close()
            close_runners(loaded.runners)

    def loaded_ids(self) -> list[int]:
        return sorted(v for v in list(self.models) if not self.quarantine.condemned(v))

    def memory_bytes(self) -> int:
        return sum(m.size_bytes for m in list(self.models.values()))
