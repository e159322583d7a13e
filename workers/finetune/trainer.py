"""`kiln trainer`: takes fine-tune jobs from the job stream and runs them one at a time.

The database is the source of truth. A trainer holds a job through a lease in its row, renewed
between steps; the stream only says "look at job X". On start and every reconcile interval, any
trainer (1) puts running jobs whose lease expired (their trainer was killed) back to queued and
(2) enqueues every queued job that has no entry in the stream (Redis restarted or a dispatch was
lost). A killed trainer's job is thus picked up again and resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError

from model_store import fence
from model_store.blobs import BlobStore
from model_store.errors import StoreError
from model_store.jobs import JobStore, LeaseLost
from model_store.registry import Registry
from workers.common.retry import run_until_stopped
from workers.common.signals import stop_on_signals
from workers.contract.compress_spec import KIND as COMPRESSION
from workers.contract.finetune_check import FenceLimits
from workers.contract.finetune_queue import JobQueue
from workers.contract.redis_keys import RedisKeys
from workers.contract.sweep_spec import SWEEP_PREFIX
from workers.finetune.compress_job import execute_compression
from workers.finetune.errors import describe_error
from workers.finetune.fence import TrainingFailed
from workers.finetune.job import DatasetUnusable, HandBack, JobContext, execute, prune
from workers.finetune.metrics import TrainerMetrics
from workers.finetune.model import ModelNotTrainable
from workers.finetune.sweep import SweepAdvancer

log = logging.getLogger("kiln.trainer")
_READABLE = (DatasetUnusable, ModelNotTrainable, StoreError)
_INFRA = (RedisError, OperationalError, OSError)
_BACKOFF = ExponentialBackoff(cap=5.0, base=0.05)  # 0.1 s after a first failure, doubling to 5 s


@dataclass(frozen=True, slots=True)
class TrainerConfig:
    lease_s: float = 30.0
    renew_interval_s: float = 1.0
    reconcile_interval_s: float = 10.0
    claim_idle_ms: int = 60_000
    block_ms: int = 1_000
    limits: FenceLimits = field(default_factory=FenceLimits)  # of the fenced training process


def error_of(exc: Exception) -> dict[str, str]:
    """A readable error for the job object (no stack trace)."""
    if isinstance(exc, TrainingFailed):  # from the fenced training process, or its death
        return exc.error
    return describe_error(exc, _READABLE)


class Trainer:
    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        registry: Registry,
        blobs: BlobStore,
        store: JobStore,
        config: TrainerConfig,
        metrics: TrainerMetrics | None = None,
    ) -> None:
        self.trainer_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.queue = JobQueue(client, keys, self.trainer_id)
        self.store = store
        self.config = config
        self._stop = threading.Event()
        self.metrics = metrics
        self.ctx = JobContext(
            store,
            registry,
            blobs,
            self.trainer_id,
            config.lease_s,
            config.renew_interval_s,
            self._stop,
            metrics,
            config.limits,
        )
        self.sweeps = SweepAdvancer(self.ctx, self.queue.enqueue)
        self._next_reconcile = 0.0
        self.current_job: str | None = None

    def install_signal_handlers(self) -> None:
        stop_on_signals(self._stop, log, "hand back the current job and stop")

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        log.info("trainer %s started", self.trainer_id)
        # the training child's module is imported once by the fork server, not by every job
        fence.preload(
            "workers.common.fork_server_init", "workers.finetune.child", "workers.finetune.compress_child"
        )
        threading.Thread(target=fence.prestart, name="kiln-fence-prestart", daemon=True).start()
        # sweeps advance (new trials, pruning) while this trainer is busy with a job, too
        interval = self.config.reconcile_interval_s
        sweeps = threading.Thread(
            target=self.sweeps.loop, args=(self._stop, interval), name="kiln-sweeps", daemon=True
        )
        sweeps.start()
        run_until_stopped(self.tick, self._stop, _INFRA, self._infra_lost, _BACKOFF)
        sweeps.join(30)  # it stops at its next wait; let it finish the sweep it is advancing
        log.info("trainer %s stopped", self.trainer_id)

    def _infra_lost(self, exc: Exception) -> None:
        log.warning("queue or database unavailable (%s); retrying", type(exc).__name__)
        self.queue.forget_group()

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_reconcile:
            self.reconcile()
            self._next_reconcile = now + self.config.reconcile_interval_s
        entries = self.queue.claim_stale(self.config.claim_idle_ms)
        entries += self.queue.read(self.config.block_ms) if not entries else []
        for entry_id, job_id in entries:
            if self._stop.is_set():
                return
            self.take(entry_id, job_id)

    def reconcile(self) -> None:
        for job_id in self.store.requeue_expired():
            log.warning("job %s lost its trainer; queued again", job_id)
        present = self.queue.present()
        for job_id in self.store.queued_job_ids():
            if job_id not in present:
                log.info("job %s is queued in the database but not in the stream; enqueued", job_id)
                self.queue.enqueue(job_id)
        self.sweeps.advance_all()

    def take(self, entry_id: bytes, job_id: str) -> None:
        if job_id.startswith(SWEEP_PREFIX):  # "look at sweep X": created, or asked to promote
            self.queue.done(entry_id)
            self.sweeps.advance(job_id)
            return
        claimed = self.store.claim(job_id, self.trainer_id, self.config.lease_s)
        self.queue.done(entry_id)  # the lease in the database holds the job from here on
        if claimed:
            self.run_job(job_id)
            self.sweeps.after_job(job_id)  # a trial: its sweep's next trials, or its end

    def run_job(self, job_id: str) -> None:
        self.current_job = job_id
        if self.metrics is not None:
            self.metrics.started()
        log.info("job %s: started", job_id)
        try:
            outcome = self._run(job_id)
        finally:
            self.current_job = None
        log.info("job %s: %s", job_id, outcome)
        if self.metrics is not None:
            self.metrics.ended(outcome)

    def _run(self, job_id: str) -> str:
        try:
            row = self.store.job_by_id(job_id)
            if row is not None and row.kind == COMPRESSION:
                execute_compression(self.ctx, job_id)
            else:
                execute(self.ctx, job_id)
            return "succeeded"
        except LeaseLost:
            return self._lost(job_id)
        except _INFRA as exc:
            # not the job's fault: keep it; the lease runs out and the job resumes from its checkpoint
            log.warning("job %s: abandoned, queue or database unavailable (%s)", job_id, type(exc).__name__)
            return "abandoned"
        except HandBack:
            if self.store.hand_back(job_id, self.trainer_id, "trainer stopping; the job is queued again"):
                self.queue.enqueue(job_id)
            return "handed_back"
        except Exception as exc:
            log.exception("job %s failed", job_id)
            error = error_of(exc)
            with contextlib.suppress(LeaseLost):
                self.store.finish(
                    job_id, self.trainer_id, "failed", error=error, message=f"job failed: {error['message']}"
                )
                self._prune_failed(job_id)
            return "failed"

    def _prune_failed(self, job_id: str) -> None:
        row = self.store.job_by_id(job_id)
        if row is not None and row.status == "failed":
            prune(self.ctx, job_id, int(row.spec.get("keep_checkpoints", 1)))

    def _lost(self, job_id: str) -> str:
        """Why the lease went: the job was cancelled or paused, or else taken over ("lost")."""
        try:
            row = self.store.job_by_id(job_id)
        except _INFRA:
            return "lost"
        status = row.status if row is not None else ""
        return status if status in ("cancelled", "paused") else "lost"
