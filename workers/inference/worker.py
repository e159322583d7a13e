"""The inference worker: a consumer of every active request stream.

Loop: read up to N entries across streams (blocking only until the next batch is due), drop
expired ones, validate each item alone, batch dynamically per version, run, split results,
reply to the asking gateway and ack, all in one round trip per batch. Entries a dead consumer
left pending are taken over with XAUTOCLAIM one at a time and run alone; after max_deliveries
they are dead-lettered. A watchdog thread renews the leases on held entries and reports the
worker not ready when its own loop stalls (workers/inference/watchdog.py, leases.py); load/unload
commands, warmup and the memory budget live in workers/inference/lifecycle.py. Every model instance is a
fenced child process (workers/inference/fenced.py) and every version runs its batches on a pool of its
instances (workers/inference/instances.py), so the loop never waits on model code: a model that does not
answer by its batch's deadline is killed and its version unloaded (workers/inference/quarantine.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from model_store.blobs import BlobStore
from model_store.errors import StoreError, public_message
from model_store.fence import FenceDied, FenceTimeout
from model_store.limits import ArtifactLimits
from model_store.registry import Registry, ResolvedVersion
from workers.common.signals import stop_on_signals
from workers.contract.errors import LoadError
from workers.contract.messages import ContractError, ErrorCode, InferReplyMsg, InferRequestMsg, TensorMeta
from workers.contract.redis_keys import RedisKeys
from workers.contract.tensors import TensorDecodeError, from_bytes, to_bytes
from workers.contract.usage import Charge, split_compute
from workers.inference import memory
from workers.inference.batcher import Batcher, BatchPolicy, Item
from workers.inference.fenced import (
    MARGIN_S,
    FenceMode,
    close_runners,
    deadline_scope,
    fenced_of,
    load_runner,
    start_fork_server,
)
from workers.inference.instances import InstancePool
from workers.inference.leases import Leases
from workers.inference.lifecycle import Commands, lru_victims, measured, release_memory, warm
from workers.inference.metrics import WorkerMetrics
from workers.inference.quarantine import Quarantine
from workers.inference.queue import Entry, WorkQueue
from workers.inference.runners import InputRejected, Runner, split_failed
from workers.inference.watchdog import Watchdog

log = logging.getLogger("kiln.worker")
POLL_BELOW_S = 0.02


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    read_count: int = 64
    claim_idle_ms: int = 5_000  # live workers renew their entries; idle this long means gone
    claim_interval_ms: int = 1_000
    max_deliveries: int = 3
    heartbeat_ttl_s: float = 5.0
    reply_ttl_s: int = 300
    async_result_ttl_s: int = 3600
    threads: int = 0
    metrics_port: int = 0
    memory_budget_bytes: int = 0  # 0: unlimited; else least-recently-used versions are unloaded
    artifact_limits: ArtifactLimits = field(default_factory=ArtifactLimits)  # bundles are loaded under these
    fence: FenceMode = "required"  # model code in fenced children (workers/inference/fenced.py)
    model_memory_bytes: int = 8 << 30  # address-space limit of each CPU model process
    hung_backoff_s: float = 30.0  # a version unloaded after it hung loads again after this


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


class ItemRejected(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def now_ms() -> int:
    return int(time.time() * 1000)


class Worker:
    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        registry: Registry,
        blobs: BlobStore,
        config: WorkerConfig,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.queue = WorkQueue(client, keys, self.worker_id, config.reply_ttl_s)
        self.registry = registry
        self.blobs = blobs
        self.config = config
        self.metrics = metrics or WorkerMetrics()
        self.batcher = Batcher()
        self.models: dict[int, Loaded] = {}
        self._stop = threading.Event()
        self._streams: list[str] = []
        self._next_refresh = 0.0
        self._next_claim = 0.0
        self.leases = Leases(self.queue)
        interval = min(1.0, config.heartbeat_ttl_s / 3, config.claim_idle_ms / 3000)
        self.commands = Commands(client, keys)
        self.load_failures: dict[int, str] = {}
        self.quarantine = Quarantine(config.hung_backoff_s)
        self.watchdog = Watchdog(self._beat_while_busy, self.leases.renew, interval)

    # lifecycle --------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        stop_on_signals(self._stop, log, "stop taking new work")

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        log.info("worker %s starting", self.worker_id)
        self.metrics.up.set(1)
        self.watchdog.start()
        if self.config.fence != "off":
            # the runtimes' imports take seconds: in the background, while the loop heartbeats
            threading.Thread(target=start_fork_server, name="kiln-fork-server", daemon=True).start()
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self.tick()
                backoff = 0.05
            except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as exc:
                # NOGROUP: the client reconnected on its own to a Redis that lost our groups
                log.warning("redis unavailable or reset (%s); retrying", type(exc).__name__)
                self.queue.forget_groups()
                self._next_refresh = 0.0
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
        self._shutdown()

    def _shutdown(self) -> None:
        """Finish what was already read, then leave; unread entries stay in the stream."""
        try:
            for version_id, items in self.batcher.ready(time.monotonic(), flush=True):
                self._dispatch(version_id, items)
            for loaded in list(self.models.values()):
                if loaded.pool is not None:
                    loaded.pool.close()
                close_runners(loaded.runners)
            self.queue.drop_heartbeat(self.worker_id)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            log.warning("redis unavailable at shutdown; unacknowledged entries will be reclaimed")
        self.watchdog.stop()
        self.metrics.up.set(0)
        log.info("worker %s stopped", self.worker_id)

    # one turn of the loop ---------------------------------------------------------------------
    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_refresh:
            self._streams = self.queue.active_streams()
            self._unload_condemned()
            self._apply_commands()
            self._beat()
            self._next_refresh = now + min(1.0, self.config.heartbeat_ttl_s / 3)
        if now >= self._next_claim:
            for stream in self._streams:
                self._reclaim(stream)
            self._next_claim = time.monotonic() + self.config.claim_interval_ms / 1000
        if not self._streams:
            self._stop.wait(0.1)
            return
        due = self.batcher.seconds_until_due(time.monotonic(), self._capacity)
        wait_s = min(due if due is not None else 1.0, self._next_refresh - now, 1.0)
        if due is not None and wait_s < POLL_BELOW_S:
            # Redis times out a blocked read coarsely (a 2 ms BLOCK takes ~8 ms): poll and sleep
            # here instead, so a batch runs when its delay is up, not several ms later
            entries = self.queue.read(self._streams, self._read_count(), 0)
            if not entries and wait_s > 0:
                self._stop.wait(min(wait_s, 0.0005))
        else:
            entries = self.queue.read(self._streams, self._read_count(), max(1, int(wait_s * 1000)))
        self._accept(entries)
        for version_id, items in self.batcher.ready(time.monotonic(), capacity=self._capacity):
            self._dispatch(version_id, items)

    def _capacity(self, version_id: int) -> bool:
        loaded = self.models.get(version_id)
        return loaded is None or loaded.has_capacity()

    def _dispatch(self, version_id: int, items: list[Item]) -> None:
        """Run a batch here, or on a free instance of the version's pool."""
        loaded = self.models[version_id]
        if loaded.pool is None:
            self._execute(loaded, items)
        else:
            loaded.pool.submit(lambda: self._execute(loaded, items))

    def _reclaim(self, stream: str, limit: int = 256) -> None:
        """Take over a dead consumer's entries one at a time, each run alone: a request that
        crashed its worker then costs only its own delivery count, never its batch mates'."""
        for _ in range(limit):
            entries = self.queue.claim_stale(stream, self.config.claim_idle_ms, count=1)
            if not entries:
                return
            self._accept(entries)

    def _read_count(self) -> int:
        sizes = [m.policy.max_batch_size for m in self.models.values()]
        return max([self.config.read_count, *sizes])

    def _info(self) -> dict[str, object]:
        return {
            "id": self.worker_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "metrics_port": self.config.metrics_port,
            "loaded": sorted(v for v in list(self.models) if not self.quarantine.condemned(v)),
            "ready": True,
            "failed": {str(vid): why for vid, why in dict(self.load_failures).items()},
            "memory_bytes": sum(m.size_bytes for m in list(self.models.values())),
        }

    def _beat(self) -> None:
        self.queue.heartbeat(self.worker_id, self._info(), self.config.heartbeat_ttl_s)

    def _beat_while_busy(self, ready: bool, busy_s: float) -> None:
        """The watchdog's heartbeat while model code runs (ready=False once past a deadline)."""
        info = {**self._info(), "ready": ready, "busy_s": round(busy_s, 3)}
        self.queue.heartbeat(self.worker_id, info, self.config.heartbeat_ttl_s)

    # admission of dequeued entries ------------------------------------------------------------
    def _accept(self, entries: list[Entry]) -> None:
        failed: list[tuple[str, InferReplyMsg]] = []
        done: list[Entry] = []
        self.leases.hold(entries)
        for entry in entries:
            outcome = self._admit(entry)
            if outcome is not None:
                done.append(entry)
                if outcome[0]:  # a message too broken to name its reply stream gets none
                    failed.append(outcome)
        if done:
            self._finish(failed, done)

    def _admit(self, entry: Entry) -> tuple[str, InferReplyMsg] | None:
        """Queue the entry for batching, or return the failure reply that finishes it."""
        if entry.deliveries > self.config.max_deliveries:
            self.queue.dead_letter(entry, f"delivered {entry.deliveries} times")
            self.metrics.dead_lettered.inc()
            ident = InferRequestMsg.peek_id(entry.fields) or ("", "")
            return ident[1], InferReplyMsg.failure(
                ident[0],
                ErrorCode.DEAD_LETTERED,
                "request failed on every delivery and was dead-lettered",
                self.worker_id,
            )
        try:
            msg = InferRequestMsg.from_fields(entry.fields)
        except ContractError as exc:
            ident = InferRequestMsg.peek_id(entry.fields) or ("", "")
            return ident[1], InferReplyMsg.failure(ident[0], ErrorCode.INVALID_INPUT, str(exc))
        remaining_ms = msg.deadline_ms - now_ms()
        if remaining_ms <= 0:
            return msg.reply_to, InferReplyMsg.failure(
                msg.request_id, ErrorCode.DEADLINE_EXCEEDED, "deadline passed while queued", self.worker_id
            )
        try:
            loaded = self._model(self.queue.keys.version_of(entry.stream))
            inputs, count, shape_key = self._decode(loaded, msg)
        except ItemRejected as exc:
            return msg.reply_to, InferReplyMsg.failure(msg.request_id, exc.code, str(exc), self.worker_id)
        mono = time.monotonic()
        item = Item(
            key=(entry, msg),
            inputs=inputs,
            count=count,
            shape_key=shape_key,
            arrived=mono,
            deadline=mono + remaining_ms / 1000,
            priority=msg.priority,
        )
        if entry.deliveries > 1:  # redelivered: suspect, so it runs alone and now
            self._dispatch(loaded.version.version_id, [item])
        else:
            self.batcher.add(loaded.version.version_id, loaded.policy, item)
        return None

    def _model(self, version_id: int) -> Loaded:
        loaded = self.models.get(version_id)
        if loaded is not None and not self.quarantine.condemned(version_id):
            return loaded
        if version_id in self.commands.unloaded:
            raise ItemRejected(ErrorCode.UNAVAILABLE, "this model version is unloaded; load it first")
        refused = self.quarantine.refusal(version_id)
        if refused is not None:
            raise ItemRejected(ErrorCode.UNAVAILABLE, f"this model version is unavailable: {refused}")
        started = time.monotonic()
        version, runners, size, used = self._load_instances(version_id)
        self.load_failures.pop(version_id, None)
        self._make_room(size, version_id)
        cfg = version.config
        batching = version.signature.batched() and cfg.max_batch_size > 1
        policy = BatchPolicy(
            cfg.max_batch_size if batching else 1, cfg.max_queue_delay_ms / 1000, cfg.preferred_batch_sizes
        )
        pool = InstancePool(runners, f"kiln-v{version_id}")  # the loop never runs model code itself
        runner = runners[0]
        loaded = self.models[version_id] = Loaded(
            version, runner, policy, size, time.monotonic(), pool, runners
        )
        self.metrics.load_duration.labels(version.model, str(version.version)).observe(
            time.monotonic() - started
        )
        self.metrics.loaded.set(len(self.models))
        self.metrics.version_loaded(version.model, version.version, runner.device, used)
        log.info("loaded %s:%s on %s", version.model, version.version, runner.device)
        self._beat()  # ready now: say so before the first answer goes out
        return loaded

    def _load_instances(self, version_id: int) -> tuple[ResolvedVersion, list[Runner], int, int | None]:
        """Start and warm up the version's instances: (version, runners, bytes they count for in
        the memory budget, memory the load took as measured)."""
        mem_before = memory.snapshot()
        cuda: list[int] = []
        runners: list[Runner] = []
        cfg = self.config
        try:
            version = self.registry.by_version_id(version_id)
            path = self.blobs.path_for(version.sha256)
            with self.watchdog.busy(float("inf")), measured(cuda):  # heartbeats go on during a long load
                for _ in range(version.config.instances):
                    runners.append(
                        load_runner(
                            version, path, cfg.threads, cfg.fence, cfg.model_memory_bytes, cfg.artifact_limits
                        )
                    )
                for r in runners:
                    warm(r, version.signature)
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
        busy = {vid for vid in self.models if self.batcher.pending(vid)} | {loading}
        for vid in lru_victims(sizes, need, self.config.memory_budget_bytes, busy):
            self.unload(vid)

    def unload(self, version_id: int) -> bool:
        """Drop a loaded version and free its memory (not while requests wait for it)."""
        loaded = self.models.get(version_id)
        if loaded is None or self.batcher.pending(version_id):
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
        self._beat()
        return True

    def _condemn(self, loaded: Loaded, why: str) -> None:
        """From a pool thread: kill the version's children now; the loop unloads it."""
        vid = loaded.version.version_id
        if self.quarantine.condemn(vid, why):
            log.error("version %s unloaded: %s", vid, why)
            self.load_failures[vid] = why
            close_runners(loaded.runners, kill=True)
            self._next_refresh = 0.0  # unload and report it on the loop's next turn

    def _unload_condemned(self) -> None:
        for vid in self.quarantine.pending():
            if vid not in self.models:
                self.quarantine.unloaded(vid)
            elif not self.unload(vid):  # its queued batches fail first (see _execute)
                self._beat()

    def _apply_commands(self) -> None:
        for version_id, action in self.commands.new():
            if action == "unload":
                self.unload(version_id)
                continue
            try:
                self._model(version_id)
            except ItemRejected as exc:
                log.warning("load of version %s asked for and failed: %s", version_id, exc)

    @staticmethod
    def _decode(loaded: Loaded, msg: InferRequestMsg) -> tuple[dict[str, np.ndarray], int, tuple[Any, ...]]:
        """Check one item against the signature on its own and decode its tensors."""
        sig = loaded.version.signature
        given = {t.name for t in msg.inputs}
        wanted = {t.name for t in sig.inputs}
        if given != wanted:
            raise ItemRejected(ErrorCode.INVALID_INPUT, f"inputs must be exactly {sorted(wanted)}")
        inputs: dict[str, np.ndarray] = {}
        for meta, buf in zip(msg.inputs, msg.tensors, strict=True):
            spec = sig.input(meta.name)
            assert spec is not None
            if meta.datatype != spec.datatype or not spec.matches_shape(meta.shape):
                raise ItemRejected(
                    ErrorCode.INVALID_INPUT, f"input {meta.name!r} does not match the signature"
                )
            try:
                inputs[meta.name] = from_bytes(buf, meta.datatype, meta.shape)
            except TensorDecodeError as exc:
                raise ItemRejected(ErrorCode.INVALID_INPUT, f"input {meta.name!r}: {exc}") from exc
        batching = loaded.policy.batching
        counts = {arr.shape[0] for arr in inputs.values()} if batching else {1}
        if len(counts) != 1:
            raise ItemRejected(ErrorCode.INVALID_INPUT, "inputs disagree on the batch dimension")
        shape_key = tuple(inputs[t.name].shape[1:] for t in sig.inputs) if batching else ()
        return inputs, counts.pop(), shape_key

    # execution --------------------------------------------------------------------------------
    def _execute(self, loaded: Loaded, items: list[Item]) -> None:
        loaded.last_used = time.monotonic()
        now = time.monotonic()
        replies: list[tuple[str, InferReplyMsg]] = []
        live: list[Item] = []
        for item in items:
            if item.deadline <= now:
                _entry, msg = item.key
                replies.append(
                    (
                        msg.reply_to,
                        InferReplyMsg.failure(
                            msg.request_id,
                            ErrorCode.DEADLINE_EXCEEDED,
                            "deadline passed while queued",
                            self.worker_id,
                        ),
                    )
                )
            else:
                live.append(item)
        charges: list[Charge] = []
        if live and self.quarantine.condemned(loaded.version.version_id):
            why = self.load_failures.get(loaded.version.version_id, "")
            replies.extend(self._fail(live, ErrorCode.UNAVAILABLE, f"this model version was unloaded: {why}"))
        elif live:
            replies.extend(self._run_group(loaded, live, charges))
        self._finish(replies, [item.key[0] for item in items], charges)

    def _finish(
        self, replies: list[tuple[str, InferReplyMsg]], done: list[Entry], charges: list[Charge] | None = None
    ) -> None:
        try:
            self.queue.finish(replies, done, charges)
        finally:  # if the ack did not happen, stop renewing: the entries are redelivered
            self.leases.release(done)
        kept = {to for to, _ in replies if self.queue.keys.is_async_result(to)}
        if kept:  # asynchronous results are kept for their own, longer time
            self.queue.keep(kept, self.config.async_result_ttl_s)

    def _fail(self, items: list[Item], code: str, message: str) -> list[tuple[str, InferReplyMsg]]:
        return [
            (i.key[1].reply_to, InferReplyMsg.failure(i.key[1].request_id, code, message, self.worker_id))
            for i in items
        ]

    def _run_group(
        self, loaded: Loaded, items: list[Item], charges: list[Charge]
    ) -> list[tuple[str, InferReplyMsg]]:
        """Run items as one batch; if it fails, split it (halves after out-of-memory, else each
        item alone) so that one bad item fails alone. A model that does not answer by the
        batch's deadline, or whose process dies, fails the batch and is unloaded."""
        v = loaded.version
        started = time.perf_counter()
        deadline = max(item.deadline for item in items)
        fenced = fenced_of(loaded.runner_here()) is not None
        # fenced: the child is killed at deadline + MARGIN_S, so only a stall of this thread
        # itself makes the worker not ready; unfenced, model code past its deadline does
        stall = deadline + MARGIN_S + 2.0 if fenced else min(item.deadline for item in items)
        try:
            with self.watchdog.busy(stall), deadline_scope(deadline):
                outputs = self._forward(loaded, items)
        except (FenceTimeout, FenceDied) as exc:
            hung = isinstance(exc, FenceTimeout)
            why = "model did not answer within its deadline" if hung else f"model process died: {exc}"
            self._condemn(loaded, why)
            code = ErrorCode.DEADLINE_EXCEEDED if hung else ErrorCode.MODEL_ERROR
            self.metrics.failure(v.model, v.version, code, len(items))
            return self._fail(items, code, f"model execution failed: {why}")
        except Exception as exc:
            if len(items) > 1:
                log.warning("batch of %d failed (%s); splitting it", len(items), type(exc).__name__)
                groups = split_failed(exc, items)
                return [r for group in groups for r in self._run_group(loaded, group, charges)]
            code = ErrorCode.INVALID_INPUT if isinstance(exc, InputRejected) else ErrorCode.MODEL_ERROR
            self.metrics.failure(v.model, v.version, code)
            return self._fail(items, code, f"model execution failed: {public_message(exc)}")
        compute_s = time.perf_counter() - started
        wall = now_ms()
        self.metrics.batch(
            v.model,
            v.version,
            sum(i.count for i in items),
            len(items),
            compute_s,
            [max(0, wall - item.key[1].enqueued_ms) / 1000 - compute_s for item in items],
        )
        charges.extend(self._charge(v, items, compute_s))
        return self._split(loaded, items, outputs, compute_s)

    def _charge(self, v: ResolvedVersion, items: list[Item], compute_s: float) -> list[Charge]:
        """Divide the batch's compute time among its requests by item count."""
        requests = [(i.key[1].tenant_id, i.key[1].key_id, i.count) for i in items]
        charges = split_compute(v.model, v.version, requests, compute_s)
        self.metrics.charge(charges)
        return charges

    @staticmethod
    def _forward(loaded: Loaded, items: list[Item]) -> dict[str, np.ndarray]:
        sig = loaded.version.signature
        if len(items) == 1:
            batch = items[0].inputs
        else:
            batch = {t.name: np.concatenate([i.inputs[t.name] for i in items]) for t in sig.inputs}
        outputs = loaded.runner_here().run(batch)
        total = sum(i.count for i in items)
        for spec in sig.outputs:
            out = outputs.get(spec.name)
            if out is None:
                raise ValueError(f"model produced no output {spec.name!r}")
            if loaded.policy.batching and (out.ndim == 0 or out.shape[0] != total):
                raise ValueError(
                    f"model returned {out.shape[0] if out.ndim else 0} rows of "
                    f"{spec.name!r} for {total} items"
                )
        return outputs

    def _split(
        self, loaded: Loaded, items: list[Item], outputs: dict[str, np.ndarray], compute_s: float
    ) -> list[tuple[str, InferReplyMsg]]:
        sig = loaded.version.signature
        replies = []
        offset = 0
        total = sum(i.count for i in items)
        for item in items:
            _entry, msg = item.key
            names = msg.outputs or [t.name for t in sig.outputs]
            metas: list[TensorMeta] = []
            bufs: list[bytes] = []
            for name in names:
                spec = sig.output(name)
                assert spec is not None
                arr = outputs[name]
                if loaded.policy.batching:
                    arr = arr[offset : offset + item.count]
                metas.append(TensorMeta(name, spec.datatype, tuple(int(d) for d in arr.shape)))
                bufs.append(to_bytes(arr, spec.datatype))
            offset += item.count
            replies.append(
                (
                    msg.reply_to,
                    InferReplyMsg(
                        request_id=msg.request_id,
                        ok=True,
                        outputs=metas,
                        tensors=bufs,
                        compute_us=int(compute_s * 1e6),
                        batch_size=total,
                        worker=self.worker_id,
                    ),
                )
            )
        return replies
