"""The parent's side of a fine-tune model check: one request to a fresh fenced child
(workers/finetune/child.py, started by name) and one answer, under a wall-clock limit. The gateway
checks a job's base model with it at job creation (or a worker does, KILN_CHECKS), and the trainer
evaluates a version for promotion. Limits of every fenced fine-tune process are here too."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from model_store import conversions
from model_store.blobs import BlobStore
from model_store.channel import FenceError
from model_store.db import FileRow
from model_store.fence import FencedChild, FenceDied, FenceSpec, FenceTimeout, cuda_available
from model_store.registry import ResolvedVersion
from workers.contract.finetune_messages import Checked, Evaluated, Exported, open_child_file, plain_name

log = logging.getLogger("kiln.finetune")
CAUSAL_FORMAT = "hf-causal-lm"

# what the fenced children run (workers/finetune/child.py); tests swap in variants
CHECK_TARGET = "workers.finetune.child:check_main"
EVALUATE_TARGET = "workers.finetune.child:evaluate_main"
EXPORT_TARGET = "workers.finetune.child:export_main"


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
        return cuda_available()


class CheckFailed(Exception):
    """The model check refused the model or did not finish (the gateway answers 422)."""


def version_ref(blobs: BlobStore, version: ResolvedVersion, convert: bool = False) -> dict[str, Any]:
    """What a fenced child needs to know of a version, and where its blob is (read-only).

    An hf-causal-lm version whose GGUF file has a cached conversion (model_store/conversions.py)
    also names that bundle and its recorded sha256 ("converted"): the child loads it instead of
    dequantising the GGUF file again. Without one, `convert` asks the child to write the bundle
    it converts into its directory, for check_model to keep."""
    keys = ("version_id", "tenant_id", "model", "version", "format", "sha256")
    path = blobs.path_for(version.sha256).resolve()
    ref: dict[str, Any] = {
        **{k: getattr(version, k) for k in keys},
        "signature": version.signature.model_dump(mode="json"),
        "config": version.config.model_dump(mode="json"),
        "path": str(path),
    }
    if version.format == CAUSAL_FORMAT:
        hit = conversions.cached_for_blob(path, version.sha256)
        if hit is not None:
            ref["converted"] = {"path": str(hit[0].resolve()), "sha256": hit[1]}
        elif convert and conversions.cache_dir_for(path, version.sha256) is not None:
            ref["convert"] = True
    return ref


def file_ref(blobs: BlobStore, row: FileRow) -> dict[str, Any]:
    """A dataset file for a fenced child: its blob (read-only), format and digest."""
    path = str(blobs.path_for(row.sha256).resolve())
    return {"id": row.id, "format": row.format, "sha256": row.sha256, "path": path}


def readable_paths(args: dict[str, Any]) -> list[Path]:
    """The files named in a child's arguments: all it may read beyond the Python installation."""
    refs = [args.get(k) for k in ("base", "train", "valid", "checkpoint", "best_checkpoint")]
    converted = (args.get("base") or {}).get("converted")
    return [Path(r["path"]) for r in [*refs, converted] if r]


def _one_call(
    target: str,
    args: dict[str, Any],
    read: list[Path],
    limits: FenceLimits,
    then: Callable[[FencedChild, dict[str, Any]], Any] | None = None,
    file_bytes: int = 256 << 20,
) -> Any:
    """One request to a fresh fenced child and its answer, within check_timeout_s; `then` (if
    given) acts on the answer while the child's temp dir still exists, and its value is returned.
    `file_bytes`: the largest file the child may write."""
    spec = FenceSpec(
        read=tuple(str(p) for p in read),
        memory_bytes=limits.check_memory_mb << 20,
        cpu_s=int(limits.check_timeout_s) + 5,
        file_bytes=file_bytes,
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
        if then is not None:
            return then(child, reply)
    except FenceTimeout as exc:
        raise CheckFailed(f"the model check did not finish within {timeout:g} s") from exc
    except FenceDied as exc:
        reason = f"over its memory limit ({limits.check_memory_mb} MB)" if "MemoryError" in str(exc) else exc
        raise CheckFailed(f"the model check failed: {reason}") from exc
    finally:
        child.close()
    return reply


def check_model(args: dict[str, Any], read: list[Path], limits: FenceLimits) -> dict[str, int]:
    """Build the base model as a job would and count its (trainable) parameters, fenced. A GGUF
    base the child was asked to convert (version_ref's "convert") lands in the conversion cache."""
    base = args.get("base") or {}
    gguf = Path(base["path"]) if base.get("convert") else None
    max_bytes = 16 * gguf.stat().st_size + (64 << 20) if gguf is not None else 256 << 20

    def take(child: FencedChild, reply: dict[str, Any]) -> Checked:
        try:
            answer = Checked.model_validate(reply)
        except ValidationError as exc:
            raise CheckFailed("the model check answered a malformed message") from exc
        if gguf is not None and answer.ok and answer.converted:
            _keep_conversion(child, gguf, str(base["sha256"]), answer.converted, max_bytes)
        return answer

    answer: Checked = _one_call(CHECK_TARGET, args, read, limits, take, max_bytes)
    if not answer.ok:
        raise CheckFailed(answer.message or "the model was refused")
    return answer.counts


def _keep_conversion(child: FencedChild, gguf: Path, sha256: str, name: str, max_bytes: int) -> None:
    """Copy the bundle the child converted the GGUF base into to the cache (best effort: the
    check's answer stands either way)."""
    cache = conversions.cache_dir_for(gguf, sha256)
    if cache is None or not plain_name(name):
        return
    try:
        conversions.keep(cache, sha256, Path(child.tmp_dir).resolve() / name, max_bytes)
    except (OSError, ValueError) as exc:
        log.warning("could not keep the converted model: %s", exc)


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


@dataclass(frozen=True, slots=True)
class ExportedArtifact:
    tmp: Path  # in the blob store's temp area: commit or unlink it
    sha256: str
    size: int
    format: str
    signature: dict[str, Any]


def export_checkpoint(
    args: dict[str, Any], read: list[Path], limits: FenceLimits, blobs: BlobStore
) -> ExportedArtifact:
    """A checkpoint's weights in the job's model, exported as a version artifact, fenced. `args`
    as for a job, with `checkpoint`; CheckFailed when it cannot be."""

    def take(child: FencedChild, reply: dict[str, Any]) -> ExportedArtifact:
        try:
            answer = Exported.model_validate(reply)
        except ValidationError as exc:
            raise CheckFailed("the export answered a malformed message") from exc
        if not answer.ok or not answer.format:
            raise CheckFailed(answer.message or "the checkpoint could not be exported")
        try:
            src = open_child_file(Path(child.tmp_dir).resolve(), answer.artifact, limits.file_mb << 20)
        except OSError as exc:
            raise CheckFailed("the export left no artifact of its own") from exc
        tmp, sha, size = _copy(src, blobs)
        return ExportedArtifact(tmp, sha, size, answer.format, answer.signature)

    result: ExportedArtifact = _one_call(EXPORT_TARGET, {**args, "device": "cpu"}, read, limits, take)
    return result


def _copy(src: int, blobs: BlobStore) -> tuple[Path, str, int]:
    fd, tmp = blobs.new_tempfile()
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(src, "rb") as inp, os.fdopen(fd, "wb") as out:
            while block := inp.read(1 << 20):
                digest.update(block)
                size += len(block)
                out.write(block)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest(), size
