"""The trainer's side of the fence around fine-tune model code.

`TrainingProcess` runs one job's model work (workers/finetune/child.py: train_main) in a fenced child
that reads only the base version's blob, the dataset files and the checkpoint it resumes from,
and writes only its own temporary directory. The trainer keeps the database, the lease, events,
metrics and the blob store; it reads the child's messages (workers/contract/finetune_messages.py), validates
each, and copies the files the child names out of the child's directory (opened without
following links, regular files only, size-bounded) into the blob store.
Limits, the model check and evaluation: workers/contract/finetune_check.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from pydantic import BaseModel, TypeAdapter, ValidationError

from model_store.blobs import BlobStore
from model_store.channel import FenceError
from model_store.fence import FencedChild, FenceDied, FenceSpec
from workers.contract.finetune_check import FenceLimits
from workers.contract.finetune_messages import JOB_MESSAGE, open_child_file

_CHUNK = 1 << 20
# what the fenced children run (workers/finetune/child.py); tests swap in variants
TRAIN_TARGET = "workers.finetune.child:train_main"


class RankFence(NamedTuple):
    """What a rank of a distributed job gets beyond a training process's fence: the group's
    rendezvous directory (writable), its private network (model_store/netns.py), its GPU."""

    write: tuple[str, ...]
    netns: int
    env: dict[str, str]


class TrainingFailed(Exception):
    """The job cannot go on: the child said why, died, went silent or broke the protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.error = {"code": code or "training_error", "message": message[:500]}


def _died(exc: FenceError, limits: FenceLimits) -> TrainingFailed:
    text = str(exc)
    if "MemoryError" in text:
        text = f"over its memory limit ({limits.memory_mb} MB)"
    return TrainingFailed("training_process_died", f"the training process died: {text}")


class TrainingProcess:
    """One job's fenced training process and the messages it sends."""

    def __init__(
        self,
        args: dict[str, Any],
        read: list[Path],
        limits: FenceLimits,
        rank: RankFence | None = None,
        target: str | None = None,
        messages: TypeAdapter[Any] = JOB_MESSAGE,
    ) -> None:
        """`rank`: one rank of a distributed job; `target` and `messages`: what the child runs
        and sends (default: a fine-tune)."""
        gpu = limits.use_gpu()
        spec = FenceSpec(
            read=tuple(str(p) for p in read),
            memory_bytes=limits.memory_mb << 20,
            cpu_s=limits.cpu_s,
            file_bytes=limits.file_mb << 20,
            gpu=gpu,
            require=limits.require,
            **(rank._asdict() if rank is not None else {}),
        )
        self.limits, self.messages = limits, messages
        self.device = "cuda" if gpu else "cpu"
        try:
            self.child = FencedChild(
                target or TRAIN_TARGET,
                {**args, "device": self.device, "threads": limits.threads},
                spec,
            )
        except FenceError as exc:
            raise _died(exc, limits) from exc
        self.tmp = Path(self.child.tmp_dir).resolve()
        self._quiet_s = 0.0
        self.stopped = False  # the trainer killed it (silent, malformed): no one else's signal

    def _stop(self, wait_s: float = 0.0) -> None:
        """Kill the child (after wait_s for it to end by itself), noting whether we did."""
        if self.child.exitcode(wait_s) is None:
            self.stopped = True
        self.child.kill()

    def __enter__(self) -> TrainingProcess:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.child.kill()

    def next(self, wait_s: float) -> tuple[BaseModel, list[bytes]] | None:
        """The next message, or None when none came within wait_s."""
        try:
            if not self.child.channel.poll(wait_s):
                self._quiet_s += wait_s
                if self._quiet_s >= self.limits.silence_s:
                    self._stop()
                    raise TrainingFailed(
                        "training_process_silent",
                        f"the training process sent nothing for {self.limits.silence_s:g} s and was stopped",
                    )
                return None
            header, buffers = self.child.channel.recv()
        except (EOFError, OSError, ValueError, FenceError) as exc:
            self._stop(1.0 if isinstance(exc, EOFError) else 0.0)  # EOF: it is ending already
            raise _died(FenceDied(self.child.death()), self.limits) from exc
        self._quiet_s = 0.0
        if "died" in header:
            self._stop(1.0)
            raise _died(FenceDied(str(header["died"])[:300]), self.limits)
        try:
            return self.messages.validate_python(header), [bytes(b) for b in buffers]
        except ValidationError as exc:
            self._stop()
            raise TrainingFailed("protocol_error", "the training process sent a malformed message") from exc

    def store(self, blobs: BlobStore, name: str) -> tuple[str, int]:
        """Copy a file the child wrote into the blob store; (sha256, size)."""
        tmp, sha, size = self.take(blobs, name)
        blobs.commit(tmp, sha)
        return sha, size

    def take(self, blobs: BlobStore, name: str) -> tuple[Path, str, int]:
        """Copy a file the child wrote to a blob-store temp file: (path, sha256, size)."""
        try:
            src = open_child_file(self.tmp, name, self.limits.file_mb << 20)
        except OSError as exc:
            raise TrainingFailed(
                "protocol_error", f"the training process named no usable file {name!r}"
            ) from exc
        fd, tmp = blobs.new_tempfile()
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(src, "rb") as inp, os.fdopen(fd, "wb") as out:
                while chunk := inp.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):
            (self.tmp / name).unlink()
        return tmp, digest.hexdigest(), size
