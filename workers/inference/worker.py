"""The inference worker: a consumer of every active request stream. This module is the loop.

Loop: read up to N entries across streams (blocking only until the next batch is due), validate
each alone (validation.py: dead-lettering, expiry, decoding against the signature), batch
dynamically per version (batcher.py), run each batch on a free instance of its version
(execution.py), and send its replies, charge its usage (charging.py) and ack, all in one round
trip per batch. Entries a dead consumer left pending are taken over one at a time and run alone;
after max_deliveries they are dead-lettered. A watchdog thread renews the leases on held entries
and reports the worker not ready when its own loop stalls (watchdog.py, leases.py). Loaded
versions, the memory budget and unloading live in model_cache.py; load/unload commands and
warmup in lifecycle.py. Every model instance is a fenced child process (fenced.py) and every
version runs its batches on a pool of its instances (instances.py), so the loop never waits on
model code: a model that does not answer by its batch's deadline is killed and its version
unloaded (quarantine.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from model_store.blobs import BlobStore
from model_store.registry import Registry
from workers.common.commands import Commands
from workers.common.leases import Leases
from workers.common.retry import run_until_stopped
from workers.common.signals import stop_on_signals
from workers.contract.messages import ErrorCode
from workers.contract.redis_keys import RedisKeys
from workers.contract.usage import Charge
from workers.inference.batcher import Batcher, Item
from workers.inference.check_server import start_check_server
from workers.inference.config import WorkerConfig
from workers.inference.execution import Executor
from workers.inference.fenced import start_fork_server
from workers.inference.metrics import WorkerMetrics
from workers.inference.model_cache import Loaded, ModelCache
from workers.inference.queue import Entry, WorkQueue
from workers.inference.validation import ItemRejected, Reply, Valid, Validator
from workers.inference.watchdog import Watchdog

__all__ = ["Worker", "WorkerConfig"]

log = logging.getLogger("kiln.worker")
POLL_BELOW_S = 0.02
SUSPECT_POLL_S = 0.02  # how soon the loop looks again while a reclaimed entry runs
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, ResponseError)
BACKOFF = ExponentialBackoff(cap=2.0, base=0.025)  # 0.05 s after a first failure, doubling to 2 s


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
        self.metrics = metrics or WorkerMetrics()
        self.batcher = Batcher()
        self.blobs = blobs
        self._stop = threading.Event()
        self._streams: list[str] = []
        self._next_refresh = 0.0
        self._next_claim = 0.0
        self._suspects: set[tuple[str, bytes]] = set()  # redelivered entries running (at most one)
        self._more_to_claim = False  # _reclaim stopped for a running suspect: claim again after it
        self.leases = Leases(self.queue)
        interval = min(1.0, config.heartbeat_ttl_s / 3, config.claim_idle_ms / 3000)
        self.commands = Commands(client, keys)
        self.watchdog = Watchdog(self._beat_while_busy, self.leases.renew, interval)
        self.cache = ModelCache(
            registry,
            blobs,
            config,
            self.metrics,
            self.watchdog,
            self.batcher.pending,
            self._beat,
            self.commands.unloaded,
        )
        self.validator = Validator(
            self.queue, self.metrics, self.worker_id, config.max_deliveries, self.cache.get
        )
        self.extra_info: Callable[[], dict[str, object]] | None = None  # e.g. generation versions
        self.executor = Executor(
            self.worker_id, self.metrics, self.watchdog, self._condemn, self._why_condemned
        )

    @property
    def config(self) -> WorkerConfig:
        """One config for the loop and its model cache (tests replace it before start)."""
        return self.cache.config

    @config.setter
    def config(self, config: WorkerConfig) -> None:
        self.cache.config = config

    # lifecycle --------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        stop_on_signals(self._stop, log, "stop taking new work")

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        log.info("worker %s starting", self.worker_id)
        self.metrics.up.set(1)
        self.watchdog.start()
        # model checks for gateways without the runtimes (KILN_CHECKS; workers/inference/check_server.py)
        start_check_server(
            self.queue.r, self.queue.keys, self.blobs, self.config.fence, self.worker_id, self._stop
        )
        if self.config.fence != "off":
            # the runtimes' imports take seconds: in the background, while the loop heartbeats
            threading.Thread(target=start_fork_server, name="kiln-fork-server", daemon=True).start()
        run_until_stopped(self.tick, self._stop, REDIS_ERRORS, self._redis_lost, BACKOFF)
        self._shutdown()

    def _redis_lost(self, exc: Exception) -> None:
        # NOGROUP: the client reconnected on its own to a Redis that lost our groups
        log.warning("redis unavailable or reset (%s); retrying", type(exc).__name__)
        self.queue.forget_groups()
        self._next_refresh = 0.0

    def _shutdown(self) -> None:
        """Finish what was already read, then leave; unread entries stay in the stream."""
        try:
            for version_id, items in self.batcher.ready(time.monotonic(), flush=True):
                self._dispatch(version_id, items)
            self.cache.close()
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
            self.cache.unload_condemned()
            self._apply_commands()
            self._beat()
            self._next_refresh = now + min(1.0, self.config.heartbeat_ttl_s / 3)
        if now >= self._next_claim or (self._more_to_claim and not self._suspects):
            self._more_to_claim = False
            for stream in self._streams:
                self._reclaim(stream)
            self._next_claim = time.monotonic() + self.config.claim_interval_ms / 1000
        if not self._streams:
            self._stop.wait(0.1)
            return
        due = self.batcher.seconds_until_due(time.monotonic(), self._capacity)
        wait_s = min(due if due is not None else 1.0, self._next_refresh - now, 1.0)
        if self._more_to_claim:  # look again soon: the running suspect may be done by then
            wait_s = min(wait_s, SUSPECT_POLL_S)
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
        loaded = self.cache.models.get(version_id)
        return loaded is None or loaded.has_capacity()

    def _dispatch(self, version_id: int, items: list[Item]) -> None:
        """Run a batch here, or on a free instance of the version's pool."""
        loaded = self.cache.models[version_id]
        if loaded.pool is None:
            self._run_batch(loaded, items)
        else:
            loaded.pool.submit(lambda: self._run_batch(loaded, items))

    def _run_batch(self, loaded: Loaded, items: list[Item]) -> None:
        """On the instance's thread: the batch's replies and charges go out with its ack."""
        try:
            result = self.executor.execute(loaded, items)
            self._finish(result.replies, [item.key[0] for item in items], result.charges)
        finally:
            for item in items:
                self._suspects.discard(_ident(item.key[0]))

    def _reclaim(self, stream: str, limit: int = 256) -> None:
        """Take over a dead consumer's entries one at a time, each run alone, and the next only
        once the last has finished: a request that crashes its worker then costs only its own
        delivery count, never that of other suspects claimed behind it."""
        for _ in range(limit):
            if self._suspects:
                self._more_to_claim = True
                return
            entries = self.queue.claim_stale(stream, self.config.claim_idle_ms, count=1)
            if not entries:
                return
            self.metrics.claimed.inc(len(entries))
            self._accept(entries)

    def _read_count(self) -> int:
        sizes = [m.policy.max_batch_size for m in self.cache.models.values()]
        return max([self.config.read_count, *sizes])

    def _info(self) -> dict[str, object]:
        return {
            "id": self.worker_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "metrics_port": self.config.metrics_port,
            "loaded": self.cache.loaded_ids(),
            "ready": not self.watchdog.stalled(),  # the loop's beat never contradicts the watchdog's
            "failed": {str(vid): why for vid, why in dict(self.cache.load_failures).items()},
            "memory_bytes": self.cache.memory_bytes(),
            **(self.extra_info() if self.extra_info is not None else {}),
        }

    def _beat(self) -> None:
        self.queue.heartbeat(self.worker_id, self._info(), self.config.heartbeat_ttl_s)

    def _beat_while_busy(self, ready: bool, busy_s: float) -> None:
        """The watchdog's heartbeat while model code runs (ready=False once past a deadline)."""
        info = {**self._info(), "ready": ready, "busy_s": round(busy_s, 3)}
        self.queue.heartbeat(self.worker_id, info, self.config.heartbeat_ttl_s)

    # dequeued entries -------------------------------------------------------------------------
    def _accept(self, entries: list[Entry]) -> None:
        failed: list[Reply] = []
        done: list[Entry] = []
        self.leases.hold(entries)
        for entry in entries:
            outcome = self.validator.validate(entry)
            if isinstance(outcome, Valid):
                if outcome.alone:  # redelivered: suspect, so it runs alone and now
                    self._suspects.add(_ident(entry))
                    try:
                        self._dispatch(outcome.version_id, [outcome.item])
                    except BaseException:
                        self._suspects.discard(_ident(entry))
                        raise
                else:
                    self.batcher.add(outcome.version_id, outcome.policy, outcome.item)
                continue
            done.append(entry)
            if outcome[0]:  # a message too broken to name its reply stream gets none
                failed.append(outcome)
        if done:
            self._finish(failed, done)

    def _finish(self, replies: list[Reply], done: list[Entry], charges: list[Charge] | None = None) -> None:
        try:
            self.queue.finish(replies, done, charges)
        finally:  # if the ack did not happen, stop renewing: the entries are redelivered
            self.leases.release(done)
        kept = {to for to, _ in replies if self.queue.keys.is_async_result(to)}
        if kept:  # asynchronous results are kept for their own, longer time
            self.queue.keep(kept, self.config.async_result_ttl_s)

    # model versions ---------------------------------------------------------------------------
    def _condemn(self, loaded: Loaded, why: str) -> None:
        """From a pool thread: kill the version's children now; the loop unloads it."""
        if self.cache.condemn(loaded, why):
            self._next_refresh = 0.0  # unload and report it on the loop's next turn

    def _why_condemned(self, version_id: int) -> str | None:
        if not self.cache.quarantine.condemned(version_id):
            return None
        return self.cache.load_failures.get(version_id, "")

    def _apply_commands(self) -> None:
        for version_id, action in self.commands.new():
            if action == "unload":
                self.cache.unload(version_id)
                continue
            try:
                self.cache.get(version_id)
            except ItemRejected as exc:
                if exc.code != ErrorCode.INVALID_INPUT:  # not a version this loop serves: not a failure
                    log.warning("load of version %s asked for and failed: %s", version_id, exc)


def _ident(entry: Entry) -> tuple[str, bytes]:
    return entry.stream, entry.entry_id
