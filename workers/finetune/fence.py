"""The trainer's (and the gateway's) side of the fence around fine-tune model code.

`TrainingProcess` runs one job's model work (workers/finetune/child.py: train_main) in a fenced child
that reads only the base version's blob, the dataset files and the checkpoint it resumes from,
and writes only its own temporary directory. The trainer keeps the database, the lease, events,
metrics and the blob store; it reads the child's messages (workers/finetune/messages.py), validates
each, and copies the files the child names out of the child's directory (opened without
following links, regular files only, size-bounded) into the blob store.

`check_model` and `evaluate_version` are one request and one answer each, under a wall-clock
limit: the gateway's model check at job creation, and a version evaluated for promotion.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel, ValidationError

from model_store.blobs import BlobStore
from model_store.channel import FenceError
from model_store.db import FileRow
from model_store.fence import FencedChild, FenceDied, FenceSpec, FenceTimeout
from model_store.registry import ResolvedVersion
from workers.common.device import pick_device
from workers.finetune.messages import JOB_MESSAGE, Checked, Evaluated, plain_name

_CHUNK = 1 << 20
# what the fenced children run (workers/finetune/child.py); tests swap in variants
TRAIN_TARGET = "workers.finetune.child:train_main"
CHECK_TARGET = "workers.finetune.child:check_main"
EVALUATE_TARGET = "workers.finetune.child:evaluate_main"


@dataclass(frozen=True, slots=True)
class FenceLimits:
    """Limits of the fenced processes that run fine-tune model code (0: none). `gpu` None: use a
    GPU when torch sees one (then no address-space limit: CUDA maps more than it uses)."""

    memory_mb: int = 16384
    cpu_s: int = 0
    file_mb: int = 16384
    silence_s: float = 900.0  # no message from a training process for this long: it is stopped
    check_timeout_s: float = 60.0
    check_memory_mb: int = 8192
    gpu: bool | None = None
    threads: int = 0  # torch intra-op threads in the training process (0: torch's default)
    require: bool = True  # refuse to run model code where Landlock is missing (else: limits only)

    @classmethod
    def from_settings(cls, settings: Any) -> FenceLimits:
        return cls(
            memory_mb=settings.train_memory_mb,
            cpu_s=settings.train_cpu_s,
            file_mb=settings.train_file_mb,
            silence_s=settings.train_silence_s,
            check_timeout_s=settings.finetune_check_timeout_s,
            check_memory_mb=settings.finetune_check_memory_mb,
            require=getattr(settings, "fence", "required") == "required",
        )

    def use_gpu(self) -> bool:
        if self.gpu is not None:
            return self.gpu
        return pick_device("auto") == "cuda"


class TrainingFailed(Exception):
    """The job cannot go on: the child said why, died, went silent or broke the protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.error = {"code": code or "training_error", "message": message[:500]}


class CheckFailed(Exception):
    """The model check refused the model or did not finish (the gateway answers 422)."""


def _died(exc: FenceError, limits: FenceLimits) -> TrainingFailed:
    text = str(exc)
    if "MemoryError" in text:
        text = f"over its memory limit ({limits.memory_mb} MB)"
    return TrainingFailed("training_process_died", f"the training process died: {text}")


class TrainingProcess:
    """One job's fenced training process and the messages it sends."""

    def __init__(self, args: dict[str, Any], read: list[Path], limits: FenceLimits) -> None:
        gpu = limits.use_gpu()
        spec = FenceSpec(
            read=tuple(str(p) for p in read),
            memory_bytes=limits.memory_mb << 20,
            cpu_s=limits.cpu_s,
            file_bytes=limits.file_mb << 20,
            gpu=gpu,
            require=limits.require,
        )
        self.limits = limits
        self.device = "cuda" if gpu else "cpu"
        try:
            self.child = FencedChild(
                TRAIN_TARGET,
                {**args, "device": self.device, "threads": limits.threads},
                spec,
            )
        except FenceError as exc:
            raise _died(exc, limits) from exc
        self.tmp = Path(self.child.tmp_dir).resolve()
        self._quiet_s = 0.0

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
                    self.child.kill()
                    raise TrainingFailed(
                        "training_process_silent",
                        f"the training process sent nothing for {self.limits.silence_s:g} s and was stopped",
                    )
                return None
            header, buffers = self.child.channel.recv()
        except (EOFError, OSError, ValueError, FenceError) as exc:
            self.child.kill()
            raise _died(FenceDied(self.child.death()), self.limits) from exc
        self._quiet_s = 0.0
        if "died" in header:
            self.child.kill()
            raise _died(FenceDied(str(header["died"])[:300]), self.limits)
        try:
            return JOB_MESSAGE.validate_python(header), [bytes(b) for b in buffers]
        except ValidationError as exc:
            self.child.kill()
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


def open_child_file(tmp: Path, name: str, max_bytes: int) -> int:
    """A file the child wrote, never through a link: a plain name in its temp dir, a regular file
    with one link, at most max_bytes."""
    if not plain_name(name):
        raise OSError("not a plain file name")
    fd = os.open(tmp / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > max_bytes:
        os.close(fd)
        raise OSError("not a regular file of its own")
    return fd


def version_ref(blobs: BlobStore, version: ResolvedVersion) -> dict[str, Any]:
    """What a fenced child needs to know of a version, and where its blob is (read-only)."""
    keys = ("version_id", "tenant_id", "model", "version", "format", "sha256")
    return {
        **{k: getattr(version, k) for k in keys},
        "signature": version.signature.model_dump(mode="json"),
        "config": version.config.model_dump(mode="json"),
        "path": str(blobs.path_for(version.sha256).resolve()),
    }


def file_ref(blobs: BlobStore, row: FileRow) -> dict[str, Any]:
    """A dataset file for a fenced child: its blob (read-only), format and digest."""
    path = str(blobs.path_for(row.sha256).resolve())
    return {"id": row.id, "format": row.format, "sha256": row.sha256, "path": path}


def readable_paths(args: dict[str, Any]) -> list[Path]:
    """The files named in a child's arguments: all it may read beyond the Python installation."""
    refs = [args.get("base"), args.get("train"), args.get("valid"), args.get("checkpoint")]
    return [Path(r["path"]) for r in refs if r]


def _one_call(target: str, args: dict[str, Any], read: list[Path], limits: FenceLimits) -> dict[str, Any]:
    """One request to a fresh fenced child and its answer, within check_timeout_s."""
    spec = FenceSpec(
        read=tuple(str(p) for p in read),
        memory_bytes=limits.check_memory_mb << 20,
        cpu_s=int(limits.check_timeout_s) + 5,
        require=limits.require,
    )
    timeout = limits.check_timeout_s
    deadline = time.monotonic() + timeout
    try:
        child = FencedChild(target, args, spec, start_timeout_s=timeout)
    except FenceTimeout as exc:
        raise CheckFailed(f"the model check did not finish within {timeout:g} s") from exc
    except FenceError as exc:
        raise CheckFailed(f"the model check could not run: {exc}") from exc
    try:
        reply, _ = child.call({"v": 1, "op": "run"}, timeout_s=max(0.0, deadline - time.monotonic()))
    except FenceTimeout as exc:
        raise CheckFailed(f"the model check did not finish within {timeout:g} s") from exc
    except FenceDied as exc:
        reason = f"over its memory limit ({limits.check_memory_mb} MB)" if "MemoryError" in str(exc) else exc
        raise CheckFailed(f"the model check failed: {reason}") from exc
    finally:
        child.close()
    return reply


def check_model(args: dict[str, Any], read: list[Path], limits: FenceLimits) -> dict[str, int]:
    """Build the base model as a job would and count its (trainable) parameters, fenced."""
    try:
        answer = Checked.model_validate(_one_call(CHECK_TARGET, args, read, limits))
    except ValidationError as exc:
        raise CheckFailed("the model check answered a malformed message") from exc
    if not answer.ok:
        raise CheckFailed(answer.message or "the model was refused")
    return answer.counts


def evaluate_version(args: dict[str, Any], read: list[Path], limits: FenceLimits) -> dict[str, Any]:
    """A version's validation metrics on a job's validation data (promotion), fenced.
    `args` as for a job (base: the version to evaluate); CheckFailed when it cannot be evaluated."""
    args = {**args, "device": "cpu"}
    try:
        answer = Evaluated.model_validate(_one_call(EVALUATE_TARGET, args, read, limits))
    except ValidationError as exc:
        raise CheckFailed("the evaluation answered a malformed message") from exc
    if not answer.ok:
        raise CheckFailed(answer.message or "the version could not be evaluated")
    return dict(answer.metrics)
