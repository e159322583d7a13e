"""The model versions a worker holds: loading one (its instances started in fenced children
and warmed up), the memory budget (least-recently-used versions unloaded to make room),
unloading, and condemning a version whose model hung or died (workers/inference/quarantine.py)."""

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
from workers.inference.batcher import BatchPolicy
from workers.inference.config import WorkerConfig
from workers.inference.fenced import close_runners, fenced_of, load_runner
from workers.inference.instances import InstancePool
from workers.inference.lifecycle import lru_victims, measured, release_memory, warm
from workers.inference.metrics import WorkerMetrics
from workers.inference.quarantine import Quarantine
from workers.inference.runtime import Runner
from workers.inference.validation import ItemRejected
from workers.inference.watchdog import Watchdog

log = logging.getLogger("kiln.worker")


TEXT_FORMATS = ("hf-causal-lm",)
TEXT_ONLY = "a text-generation model: call it on /v1/chat/completions or /v1/completions"
ADAPTER_FORMATS = ("lora-adapter",)  # served on their base's generation stream, never loaded alone
ADAPTER_ONLY = (
    "a LoRA adapter: it is served on its base model (an hf-causal-lm base: /v1/chat/completions "
    "or /v1/completions); load the base"
)


class _NotServedHere(ItemRejected):
    """A version of a format the inference loop leaves to others (generation, adapters)."""


@dataclass(slots=True)
class Loaded:
    version: ResolvedVersion
    runner: Runner
    policy: BatchPolicy
    size_bytes: int = 0  # device memory it holds (CUDA), else its artifact size
    last_used: float = 0.0  # monotonic
    pool: InstancePool | None = None  # batches run on the pool's threads, one per instance
    runners: list[Runner] = field(default_factory=list)

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
        version, runners, size, used = self._load_instances(version_id)
        self.load_failures.pop(version_id, None)
        self._make_room(size, version_id)
        pool = InstancePool(runners, f"kiln-v{version_id}")  # the loop never runs model code itself
        runner = runners[0]
        loaded = self.models[version_id] = Loaded(
            version, runner, batch_policy(version), size, time.monotonic(), pool, runners
        )
        self.metrics.load_duration.labels(version.model, str(version.version)).observe(
            time.monotonic() - started
        )
        self.metrics.loaded.set(len(self.models))
        self.metrics.version_loaded(version.model, version.version, runner.device, used)
        log.info("loaded %s:%s on %s", version.model, version.version, runner.device)
        self._changed()  # ready now: say so before the first answer goes out
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

    def _load_instances(self, version_id: int) -> tuple[ResolvedVersion, list[Runner], int, int | None]:
        """Start and warm up the version's instances: (version, runners, bytes they count for in
        the memory budget, memory the load took as measured)."""
        mem_before = memory.snapshot()
        cuda: list[int] = []
        runners: list[Runner] = []
        try:
            version = self.registry.by_version_id(version_id)
            if version.format in TEXT_FORMATS:  # the generation loop serves these (workers/generation)
                raise _NotServedHere(ErrorCode.INVALID_INPUT, TEXT_ONLY)
            if version.format in ADAPTER_FORMATS:
                raise _NotServedHere(ErrorCode.INVALID_INPUT, ADAPTER_ONLY)
            path = self.blobs.path_for(version.sha256)
            with self.watchdog.busy(float("inf")), measured(cuda):  # heartbeats go on during a long load
                self._start_instances(version, runners)
        except _NotServedHere:  # a version this loop does not serve: not a load failure
            raise
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
        return version, runners, size, used

    def _make_room(self, need: int, loading: int) -> None:
        sizes = {vid: (m.size_bytes, m.last_used) for vid, m in self.models.items()}
        busy = {vid for vid in self.models if self._waiting(vid)} | {loading}
        for vid in lru_victims(sizes, need, self.config.memory_budget_bytes, busy):
            self.unload(vid)

    def unload(self, version_id: int) -> bool:
        """Drop a loaded version and free its memory (not while requests wait for it)."""
        loaded = self.models.get(version_id)
        if loaded is None or self._waiting(version_id):
            return False
        if loaded.pool is not None and loaded.pool.inflight:
            return False
        self.models.pop(version_id)
        if loaded.pool is not None:
            loaded.pool.close()
        close_runners(loaded.runners)
        self.quarantine.unloaded(version_id)
        del loaded
        release_memory()
        self.metrics.loaded.set(len(self.models))
        log.info("unloaded version %s", version_id)
        self._changed()
        return True

    def condemn(self, loaded: Loaded, why: str) -> bool:
        """From a pool thread: kill the version's children now (True if this condemned it);
        the loop unloads it (unload_condemned)."""
        vid = loaded.version.version_id
        if not self.quarantine.condemn(vid, why):
            return False
        log.error("version %s unloaded: %s", vid, why)
        self.load_failures[vid] = why
        close_runners(loaded.runners, kill=True)
        return True

    def unload_condemned(self) -> None:
        for vid in self.quarantine.pending():
            if vid not in self.models:
                self.quarantine.unloaded(vid)
            elif not self.unload(vid):  # its queued batches fail first (see execution.py)
                self._changed()

    def close(self) -> None:
        for loaded in list(self.models.values()):
            if loaded.pool is not None:
                loaded.pool.close()
            close_runners(loaded.runners)

    def loaded_ids(self) -> list[int]:
        return sorted(v for v in list(self.models) if not self.quarantine.condemned(v))

    def memory_bytes(self) -> int:
        return sum(m.size_bytes for m in list(self.models.values()))
