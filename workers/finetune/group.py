"""The trainer's side of a distributed fine-tune: N fenced ranks that job.py sees as one process.

`resources.processes` N > 1 starts N training processes (workers/finetune/child.py: train_main,
the same fenced child as a one-process job), each told its rank. The trainer is the launcher and
supervisor (not torchrun: its agent execs ranks outside the fork server and the fence and listens
on TCP for its rendezvous): the ranks meet through a FileStore in a directory made for the group,
the one directory they may all write, and talk over gloo on 127.0.0.1 inside a private network
namespace that holds only loopback (model_store/netns.py), or NCCL with one GPU each.

Rank 0's messages are the job's (started, step, epoch with its checkpoint, done); the others send
only errors. Any rank's error fails the job; a rank killed by a signal (kill -9, the OOM killer)
raises RankDied, and job.py restarts the whole group from the last checkpoint rank 0 wrote (at
most MAX_RESTARTS times per run). Leaving the `with` block (done, cancelled, lease lost, handed
back) kills every rank and the namespace holder.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel

from model_store.blobs import BlobStore
from model_store.netns import NetnsUnavailable, PrivateNetwork
from workers.contract.finetune_check import FenceLimits
from workers.contract.finetune_messages import Error
from workers.finetune.distributed import STORE_NAME
from workers.finetune.fence import RankFence, TrainingFailed, TrainingProcess

MAX_RESTARTS = 3  # group restarts from the checkpoint, per run of a job on one trainer
_REAP_S = 2.0  # after rank 0 fails: how long to wait for a killed peer to be seen dead


class RankDied(TrainingFailed):
    """A rank was killed by a signal: the group restarts from its last checkpoint."""

    def __init__(self, rank: int, how: str) -> None:
        super().__init__("rank_died", f"rank {rank} of the distributed job died: {how}")


def open_training(args: dict[str, Any], read: list[Path], limits: FenceLimits, processes: int) -> Training:
    """The job's training process, or its group of ranks when `processes` > 1."""
    if processes <= 1:
        return TrainingProcess(args, read, limits)
    return TrainingGroup(args, read, limits, processes)


def _gpus() -> int:
    import torch

    return int(torch.cuda.device_count())


class TrainingGroup:
    """The ranks of one distributed job: `next`, `store` and `take` as a TrainingProcess's."""

    def __init__(self, args: dict[str, Any], read: list[Path], limits: FenceLimits, processes: int) -> None:
        gpu = limits.use_gpu()
        if gpu and processes > _gpus():
            raise TrainingFailed(
                "resources_unavailable",
                f"the job asks for {processes} processes; this trainer has {_gpus()} GPUs",
            )
        try:
            self.net = PrivateNetwork()
        except NetnsUnavailable as exc:
            raise TrainingFailed(
                "resources_unavailable",
                "distributed jobs need a private network namespace for their ranks "
                "(unprivileged user namespaces); this trainer has none",
            ) from exc
        self.dir = tempfile.mkdtemp(prefix="kiln-ddp-")
        self.ranks: list[TrainingProcess] = []
        self.finished: set[int] = set()
        try:
            for r in range(processes):
                self.ranks.append(self._start(args, read, limits, r, processes, gpu))
        except BaseException:
            self.close()
            raise

    def _start(
        self, args: dict[str, Any], read: list[Path], limits: FenceLimits, r: int, n: int, gpu: bool
    ) -> TrainingProcess:
        store = str(Path(self.dir) / STORE_NAME)
        rank_args = {
            **args,
            "dist": {"rank": r, "world": n, "store": store, "backend": "nccl" if gpu else "gloo"},
        }
        # the transport on loopback, named: no hostname lookup (no DNS, no /etc/hosts behind the fence);
        # NCCL without cuMem handles and InfiniBand, which need Unix sockets and devices the fence shuts
        nccl = {"NCCL_SOCKET_IFNAME": "lo", "NCCL_CUMEM_ENABLE": "0", "NCCL_IB_DISABLE": "1"}
        env = {"CUDA_VISIBLE_DEVICES": str(r), **nccl} if gpu else {"GLOO_SOCKET_IFNAME": "lo"}
        return TrainingProcess(rank_args, read, limits, RankFence((self.dir,), self.net.pid, env))

    def __enter__(self) -> TrainingGroup:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for proc in self.ranks:
            proc.child.kill()
        self.net.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def next(self, wait_s: float) -> tuple[BaseModel, list[bytes]] | None:
        """Rank 0's next message (None when none came within wait_s), after a look at the others.
        When anything fails, a rank killed by a signal (not by us) is the story: RankDied."""
        try:
            self._watch()
            got = self.ranks[0].next(wait_s)
        except TrainingFailed:
            self._find_killed()
            raise
        if got is not None and isinstance(got[0], Error):  # a peer's death breaks rank 0's collectives
            self._find_killed()
        return got

    def _watch(self) -> None:
        """Raise for a rank other than 0 that died or reported an error; note those that ended
        their training (exit code 0)."""
        for r, proc in enumerate(self.ranks[1:], start=1):
            if r in self.finished:
                continue
            code = proc.child.exitcode()
            if code == 0:
                self.finished.add(r)
            elif code is not None:
                raise TrainingFailed("training_process_died", f"rank {r} exited with code {code}")
            elif proc.child.channel.poll(0):
                self._from_rank(r)

    def _from_rank(self, r: int) -> None:
        """A rank other than 0 sent something or closed its pipe: it ended its training (exit
        code 0), or else the group ends."""
        try:
            got = self.ranks[r].next(0)
        except TrainingFailed:
            if self.ranks[r].child.exitcode(_REAP_S) == 0:
                self.finished.add(r)
                return
            raise
        if got is not None and isinstance(got[0], Error):
            raise TrainingFailed(got[0].code, f"rank {r}: {got[0].message}")
        raise TrainingFailed("protocol_error", f"rank {r} sent a message only rank 0 may send")

    def _find_killed(self) -> None:
        """RankDied for a rank ended by a signal the trainer did not send (kill -9, the OOM
        killer), looking for up to _REAP_S while ranks are still ending."""
        deadline = time.monotonic() + _REAP_S
        while True:
            codes = [p.child.exitcode() for p in self.ranks]
            for r, (proc, code) in enumerate(zip(self.ranks, codes, strict=True)):
                if code is not None and code < 0 and not proc.stopped:
                    raise RankDied(r, proc.child.death())
            if None not in codes or time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def store(self, blobs: BlobStore, name: str) -> tuple[str, int]:
        return self.ranks[0].store(blobs, name)

    def take(self, blobs: BlobStore, name: str) -> tuple[Path, str, int]:
        return self.ranks[0].take(blobs, name)


Training = TrainingProcess | TrainingGroup  # what job.py drives
