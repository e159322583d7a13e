"""The worker's generation loop: one thread per worker process beside the inference loop
(started by `kiln worker`, so by `kiln serve` too), a consumer of every generation stream.

Turn: read new entries while the backends have room (max_running; beyond it entries stay
unread for other workers: continuous batching lets requests join and leave the running batch
per token), admit each alone (admit.py), poll the backends for events, cancel what the gateway
cancelled or what passed its deadline (one MGET every cancel_poll_ms), and send the chunks that
are due (sessions.py, chunks.py) with, for requests that ended, their charge and ack. A lease
thread renews the entries held (a generation outlives claim_idle_ms); a dead worker's entries
are taken over one at a time (deliveries counted as the inference path counts them)."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid

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
from workers.common.streams import Entry
from workers.contract.generation import GenErrorCode
from workers.contract.redis_keys import RedisKeys
from workers.generation.admit import Admitter
from workers.generation.backends import BackendLoader, GenBackends
from workers.generation.chunks import Running
from workers.generation.config import GenConfig
from workers.generation.metrics import GenMetrics
from workers.generation.queue import GenQueue, Out
from workers.generation.sessions import Sessions

log = logging.getLogger("kiln.generation")
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, ResponseError)
BACKOFF = ExponentialBackoff(cap=2.0, base=0.025)
POLL_S = 0.005  # the longest a backend poll waits while requests run


class GenerationLoop:
    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        registry: Registry,
        blobs: BlobStore,
        loader: BackendLoader,
        config: GenConfig,
        metrics: GenMetrics | None = None,
        worker_id: str = "",
    ) -> None:
        host = socket.gethostname()
        self.worker_id = worker_id or f"{host}-{os.getpid()}-gen-{uuid.uuid4().hex[:6]}"
        self.config = config
        self.queue = GenQueue(client, keys, self.worker_id, config.reply_ttl_s)
        self.metrics = metrics or GenMetrics()
        self.commands = Commands(client, keys)
        self.backends = GenBackends(registry, blobs, loader, self.metrics, self.commands.unloaded)
        self.sessions = Sessions(self.backends, self.metrics, config)
        self.admitter = Admitter(
            self.queue, self.backends, self.worker_id, config.max_deliveries, self.metrics.rejected
        )
        self.leases = Leases(self.queue)
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._last_turn = time.monotonic()
        self._streams: list[str] = []
        self._deferred: list[Entry] = []  # read while their version loads; admitted once it has
        self._unsent: list[Out] = []  # a send that failed (Redis away): sent first, in order, later
        self._next = {"refresh": 0.0, "claim": 0.0, "cancel": 0.0, "stats": 0.0, "read": 0.0}

    # lifecycle --------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def loaded_ids(self) -> list[int]:
        return self.backends.loaded_ids()

    def heartbeat(self) -> dict[str, object]:
        """What the heartbeat of the worker beside this loop says of it: the versions it hosts and
        whether it turns (the gateway counts them loaded then: service/inference/repository.py)."""
        return {"generation": self.loaded_ids(), "generation_alive": self.alive()}

    def run(self, drain_s: float = 10.0) -> None:
        log.info("generation loop %s starting", self.worker_id)
        renew = threading.Thread(target=self._renew, name="kiln-gen-leases", daemon=True)
        renew.start()
        try:
            run_until_stopped(self.tick, self._stop, REDIS_ERRORS, self._redis_lost, BACKOFF)
            self._drain(drain_s)
        finally:
            self._finished.set()  # the lease thread stops: what is not acked is taken over
        log.info("generation loop %s stopped", self.worker_id)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="kiln-generation", daemon=True)
        thread.start()
        return thread

    def alive(self) -> bool:
        """The loop turned recently (a loop stuck in a backend call must not keep its leases)."""
        return time.monotonic() - self._last_turn < self.config.claim_idle_ms / 1000

    def _renew(self) -> None:
        """Renew the held entries until the loop has drained (not only until it is told to
        stop: requests still finishing keep theirs), while the loop is alive."""
        interval = min(1.0, self.config.claim_idle_ms / 3000)
        while not self._finished.wait(interval):
            if not self.alive():
                log.warning("generation loop stalled; its entries are left to other workers")
                continue
            try:
                self.leases.renew()
            except Exception as exc:  # renewing must never die; a missed turn is retried
                log.warning("lease renewal failed: %s", type(exc).__name__)

    def _redis_lost(self, exc: Exception) -> None:
        log.warning("redis unavailable or reset (%s); retrying", type(exc).__name__)
        self.queue.forget_groups()
        self._next["refresh"] = 0.0

    def _drain(self, drain_s: float) -> None:
        """Stop reading; let running requests end for up to drain_s, then leave: what is not
        acked is taken over by another worker (a stream the client has part of as worker_lost,
        the rest generated again)."""
        until = time.monotonic() + drain_s
        try:
            self.leases.release(self._deferred)  # never started: another worker takes them over
            self._deferred = []
            while (len(self.sessions) or self._unsent) and time.monotonic() < until:
                self._last_turn = time.monotonic()
                self._poll()
                self._cancels(time.monotonic())
                self._send(self.sessions.due(time.monotonic()))
        except REDIS_ERRORS:
            log.warning("redis unavailable at shutdown; unacknowledged entries will be reclaimed")
        self.backends.close()

    # one turn ---------------------------------------------------------------------------------
    def tick(self) -> None:
        now = self._last_turn = time.monotonic()
        if now >= self._next["refresh"]:
            self._refresh()
            self._next["refresh"] = now + 1.0
        if now >= self._next["claim"]:
            for stream in self._streams:
                self._reclaim(stream)
            self._next["claim"] = time.monotonic() + self.config.claim_interval_ms / 1000
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            self._admit(deferred, held=True)
        self._read()
        self._poll()
        now = time.monotonic()
        self._cancels(now)
        if now >= self._next["stats"]:
            self._stats()
            self._next["stats"] = now + self.config.stats_ms / 1000
        self._send(self.sessions.due(time.monotonic()))

    def _refresh(self) -> None:
        self._streams = self.queue.active_streams()
        for version_id, action in self.commands.new():
            if action == "unload":
                self.backends.unload(version_id)
        self.backends.unload_idle()

    def _room(self) -> int:
        return self.config.max_running - len(self.sessions) - len(self._deferred)

    def _read(self) -> None:
        room, now = self._room(), time.monotonic()
        if not self._streams or room <= 0 or (len(self.sessions) and now < self._next["read"]):
            if not len(self.sessions):
                self._stop.wait(self.config.idle_block_ms / 1000)
            return
        self._next["read"] = now + self.config.flush_ms / 2000
        block = 0 if len(self.sessions) else self.config.idle_block_ms
        count = max(1, math.ceil(room / len(self._streams)))
        self._admit(self.queue.read(self._streams, count, block))

    def _reclaim(self, stream: str) -> None:
        """A dead consumer's entries, one at a time while there is room."""
        while self._room() > 0:
            entries = self.queue.claim_stale(stream, self.config.claim_idle_ms, count=1)
            if not entries:
                return
            self._admit(entries)

    def _admit(self, entries: list[Entry], held: bool = False) -> None:
        outs: list[Out] = []
        if not held:
            self.leases.hold(entries)
        for entry in entries:
            outcome = self.admitter.admit(entry)
            if outcome is None:
                self._deferred.append(entry)
            elif isinstance(outcome, Running):
                self.sessions.add(outcome)
            else:
                outs.append(outcome)
        self._send(outs)

    def _poll(self) -> None:
        timeout = POLL_S
        for vid, hosted in list(self.backends.hosted.items()):
            if not hosted.running:
                continue
            try:
                events = hosted.backend.poll(timeout)
            except Exception as exc:  # the version's requests fail; the loop and other versions go on
                log.error("generation backend of version %s failed: %s", vid, type(exc).__name__)
                self.sessions.fail_version(vid, GenErrorCode.MODEL_ERROR, "the model failed while generating")
                self.backends.drop(vid, "the model failed while generating")
                continue
            timeout = 0.0
            self.sessions.events(events, time.monotonic())

    def _cancels(self, now: float) -> None:
        if now < self._next["cancel"] or not len(self.sessions):
            return
        self._next["cancel"] = now + self.config.cancel_poll_ms / 1000
        self.sessions.cancel(self.queue.cancelled(self.sessions.ids()), now)
        self.sessions.overdue(now)

    def _stats(self) -> None:
        for hosted in list(self.backends.hosted.values()):
            try:
                stats = hosted.backend.stats()
            except Exception as exc:
                log.warning("backend stats failed: %s", type(exc).__name__)
                continue
            self.metrics.stats(hosted.version.model, hosted.version.version, stats)

    def _send(self, outs: list[Out]) -> None:
        """Chunks out, finished entries acked. If Redis fails, everything unsent is kept and
        goes first next time, so a request's chunks are never lost or reordered (a pipeline cut
        half-way may repeat some: the same seq, for the gateway to drop)."""
        outs = self._unsent + [o for o in outs if o.chunks or o.entry is not None]
        if not outs:
            return
        self._unsent = outs
        self.queue.send(outs)
        self._unsent = []
        self.leases.release([o.entry for o in outs if o.entry is not None])
        self.backends.unload_idle()
