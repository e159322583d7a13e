"""The fenced side of a fine-tune: everything that runs the tenant's model code.

These functions run only inside a fenced child (model_store.fence, started by workers/finetune/fence.py):
it can read the base version's blob, the dataset files and the checkpoint it resumes from, and
write only its own temporary directory ($TMPDIR). It owns no database, lease or blob store; it
reports over its channel with the messages of workers/contract/finetune_messages.py, and the trainer (the
parent) records them. Checkpoints and the exported result are files in $TMPDIR, named in the
messages; the parent reads, hashes and stores them.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import io
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from model_store.channel import Channel
from model_store.registry import ResolvedVersion
from model_store.signature import Signature, VersionConfig
from workers.contract.datasets import Dataset, parse
from workers.contract.finetune_messages import VERSION, checkpoint_name
from workers.contract.finetune_spec import DEFAULT_VALIDATION_SPLIT, JobSpec
from workers.finetune import distributed
from workers.finetune.build import Built, build
from workers.finetune.causal import IGNORE, causal_loss
from workers.finetune.distributed import RankInfo
from workers.finetune.errors import describe_error
from workers.finetune.model import ModelNotTrainable, parameter_counts, trainable_names
from workers.finetune.promote import evaluate_loaded
from workers.finetune.training import Run, split

RESULT_NAME = "result.bin"
CONVERTED_NAME = "converted.tar"  # a GGUF base as a bundle, for the conversion cache (check_main)
_PR_SET_PDEATHSIG = 1


class DatasetUnusable(Exception):
    """A stored dataset no longer parses (it was validated at upload)."""


class Integrity(Exception):
    """A file's bytes do not hash to the digest the parent recorded for it."""


READABLE = (DatasetUnusable, ModelNotTrainable, Integrity)


def die_with_parent(channel: Channel) -> None:
    """No orphan keeps training: SIGKILL when the fork server (our parent, which exits with the
    trainer) dies, and exit as soon as the trainer's end of the pipe closes."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watch() -> None:
        try:
            while True:
                channel.recv()  # the trainer sends nothing during a run: only EOF or a stop
                break
        except BaseException:  # noqa: S110 (EOF: the trainer is gone)
            pass
        os._exit(0)

    threading.Thread(target=watch, name="kiln-parent-watch", daemon=True).start()


def read_checked(ref: dict[str, Any]) -> bytes:
    data = Path(ref["path"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise Integrity("stored bytes do not match the sha256 recorded for them")
    return data


def base_of(ref: dict[str, Any]) -> tuple[ResolvedVersion, bytes]:
    """The base version and the bytes to build it from: the cached conversion of a GGUF base
    when the parent names one (its recorded sha256 checked here; the version then carries it),
    else the version's own blob. A conversion that cannot be read falls back to the blob."""
    version = resolved(ref)
    converted = ref.get("converted")
    if converted:
        try:
            data = read_checked(converted)
        except (OSError, Integrity):
            pass
        else:
            return dataclasses.replace(version, sha256=str(converted["sha256"])), data
    return version, read_checked(ref)


def _dataset(ref: dict[str, Any]) -> Dataset:
    ds, report = parse(read_checked(ref), ref["format"])
    if ds is None:
        raise DatasetUnusable(f"file {ref['id']} is not usable: {report.summary()}")
    return ds


def load_data(args: dict[str, Any], spec: JobSpec) -> tuple[Dataset, Dataset]:
    train = _dataset(args["train"])
    if args.get("valid"):
        return train, _dataset(args["valid"])
    return split(train, spec.validation_split or DEFAULT_VALIDATION_SPLIT, int(args["seed"]))


def lora_of(built: Built) -> tuple[list[str], Any] | None:
    """What a LoRA fine-tune trains and how its rows become tensors (None: not LoRA)."""
    return None if built.trainable is None else (built.trainable, built.tensors)


def resolved(ref: dict[str, Any]) -> ResolvedVersion:
    return ResolvedVersion(
        version_id=int(ref["version_id"]),
        tenant_id=int(ref["tenant_id"]),
        model=str(ref["model"]),
        version=int(ref["version"]),
        format=str(ref["format"]),
        sha256=str(ref["sha256"]),
        signature=Signature.model_validate(ref["signature"]),
        config=VersionConfig.model_validate(ref["config"]),
    )


def _send(channel: Channel, kind: str, buffers: list[bytes] | None = None, /, **body: Any) -> None:
    channel.send({"v": VERSION, "type": kind, **body}, buffers or [])


class Reporter:
    """The step hook of the training loop: one `step` message per optimizer step (rank 0 only:
    the other ranks of a distributed job report nothing but errors)."""

    def __init__(self, channel: Channel, run: Run, main: bool = True) -> None:
        self.channel, self.run, self.main = channel, run, main

    def __call__(self, row: dict[str, Any]) -> None:
        if self.main:
            _send(self.channel, "step", row=row, seconds=self.run.last_step_seconds)


def train_main(channel: Channel, args: dict[str, Any]) -> None:
    """A whole job (or one rank of it): build, evaluate the parent, resume, epochs with
    checkpoints, export. A rank other than 0 ends with exit code 0 and no message."""
    die_with_parent(channel)
    rank = distributed.rank_info(args)
    try:
        if rank is not None:
            distributed.init(rank)
        _train(channel, args, rank)
    except Exception as exc:
        _send(channel, "error", **describe_error(exc, READABLE))
    finally:
        distributed.shutdown()


def _model_error(exc: Exception) -> str:
    return describe_error(exc, READABLE)["message"]


def _train(channel: Channel, args: dict[str, Any], rank: RankInfo | None) -> None:
    spec = JobSpec.model_validate(args["spec"])
    seed = int(args["seed"])
    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    train, valid = load_data(args, spec)
    device = torch.device(args["device"])
    built = build(*base_of(args["base"]), spec, [train, valid], device, seed)
    run = Run(built.module, built.sig, train, valid, spec, seed, device, built.encode, rank, lora_of(built))
    main = rank is None or rank.main
    parent_metrics = run.evaluate() if main else {}
    parent_predictions = run.predictions()[0] if main else []
    ckpt = args.get("checkpoint")
    if ckpt is not None:
        run.load_state(read_checked(ckpt))
    if args.get("best_checkpoint"):
        run.load_best(read_checked(args["best_checkpoint"]))
    if main:
        _send(
            channel,
            "started",
            device=device.type,
            train_rows=len(train),
            valid_rows=len(valid),
            total_steps=run.total_steps,
            parent_metrics=parent_metrics,
            resumed_epoch=None if ckpt is None else int(ckpt["epoch"]),
            processes=rank.world if rank is not None else 1,
        )
    tmp = Path(os.environ["TMPDIR"])
    hook = Reporter(channel, run, main)
    while not run.done():
        t0 = time.perf_counter()
        res = run.train_epoch(hook)
        res.valid["seconds"] = round(time.perf_counter() - t0, 3)
        if not main:
            continue
        name = checkpoint_name(res.epoch)
        (tmp / name).write_bytes(run.state_bytes())
        _send(
            channel,
            "epoch",
            epoch=res.epoch,
            step=res.step,
            valid=res.valid,
            checkpoint=name,
        )
    if main:
        _done(channel, run, built, parent_predictions, tmp)


def _done(channel: Channel, run: Run, built: Built, parent_predictions: list[Any], tmp: Path) -> None:
    restored = run.restore_best()
    final = run.evaluate()
    predicted, probabilities = run.predictions()
    labels = (run.valid_y != IGNORE).sum(dim=1) if run.causal else run.valid_y  # causal: tokens per row
    table: dict[str, Any] = {
        "lines": run.valid_lines,
        "labels": labels.cpu().tolist(),
        "predicted": predicted,
        "parent_predicted": parent_predictions,
    }
    if probabilities is not None:
        table["probabilities"] = probabilities
    run.module.to("cpu")
    run.module.eval()
    data, fmt = built.export(run.module)
    (tmp / RESULT_NAME).write_bytes(data)
    _send(
        channel,
        "done",
        [json.dumps(table).encode()],
        metrics=final,
        epochs_completed=run.progress.epoch,
        stopped_early=run.progress.stopped_early,
        best_epoch=run.progress.best_epoch if restored else None,
        trained_tokens=run.trained_tokens,
        format=fmt,
        artifact=RESULT_NAME,
        signature=run.sig.model_dump(mode="json"),
    )


# the gateway's model check (dry run, freeze prefixes, a head to resize) --------------------------
def check_main(channel: Channel, args: dict[str, Any]) -> None:
    """Build the base model as the job would and count its parameters; one answer."""
    channel.recv()
    spec = JobSpec.model_validate(args["spec"])
    convert = CONVERTED_NAME if args["base"].get("convert") else ""
    try:
        datasets = [_dataset(args["train"])] if args.get("train") else []
        cpu = torch.device("cpu")
        to = Path(os.environ["TMPDIR"]) / convert if convert else None
        built = build(*base_of(args["base"]), spec, datasets, cpu, 0, convert_to=to)
        convert = convert if to is not None and to.is_file() else ""
        names = built.trainable or trainable_names(built.module, spec.hyperparameters.freeze)
        counts = parameter_counts(built.module, names)
        if built.tensors is not None and datasets:  # a causal LM: tokens and one measured step
            counts |= measure_step(built, datasets[0], spec.hyperparameters.batch_size)
    except READABLE as exc:
        _send(channel, "checked", ok=False, message=str(exc)[:500])
        return
    except Exception as exc:
        _send(channel, "checked", ok=False, message=f"the model could not be built: {_model_error(exc)}")
        return
    _send(channel, "checked", ok=True, counts=counts, converted=convert)


def measure_step(built: Built, ds: Dataset, batch_size: int) -> dict[str, int]:
    """The training file's exact token counts under the model's tokenizer and chat template (a
    row longer than the context fails with its line) and one optimizer-free training step's
    wall time on a batch of its first rows (forward and backward, in milliseconds)."""
    assert built.tensors is not None
    x, y = built.tensors(ds)
    built.module.train()
    t0 = time.perf_counter()
    causal_loss(built.module(x[:batch_size]), y[:batch_size]).backward()
    step_ms = int((time.perf_counter() - t0) * 1000)
    built.module.zero_grad(set_to_none=True)
    return {"tokens": int(x[:, 1].sum()), "loss_tokens": int((y != IGNORE).sum()), "step_ms": step_ms}


# a checkpoint made a version (POST .../checkpoints/{id}/promote) ------------------------------------
def export_main(channel: Channel, args: dict[str, Any]) -> None:
    """Build the job's model as training did, load a checkpoint's weights, export it; one answer."""
    channel.recv()
    spec = JobSpec.model_validate(args["spec"])
    try:
        train, valid = load_data(args, spec)
        device = torch.device("cpu")
        built = build(*base_of(args["base"]), spec, [train, valid], device, 0)
        state = torch.load(
            io.BytesIO(read_checked(args["checkpoint"])), map_location=device, weights_only=True
        )
        built.module.load_state_dict(state["model"], strict=built.trainable is None)
        built.module.eval()
        data, fmt = built.export(built.module)
        (Path(os.environ["TMPDIR"]) / RESULT_NAME).write_bytes(data)
    except READABLE as exc:
        _send(channel, "exported", ok=False, message=str(exc)[:500])
        return
    except Exception as exc:
        _send(
            channel,
            "exported",
            ok=False,
            message=f"the checkpoint could not be exported: {_model_error(exc)}",
        )
        return
    sig = built.sig.model_dump(mode="json")
    _send(channel, "exported", ok=True, artifact=RESULT_NAME, format=fmt, signature=sig)


# promotion: another version evaluated on the job's validation data ---------------------------------
def evaluate_main(channel: Channel, args: dict[str, Any]) -> None:
    """Load a version (as a parent would be) and answer its metrics on the job's validation rows."""
    channel.recv()
    spec = JobSpec.model_validate(args["spec"])
    try:
        _train, valid = load_data(args, spec)
        base, data = base_of(args["base"])
        metrics = evaluate_loaded(base, data, spec, valid, torch.device(args["device"]))
    except Exception as exc:
        _send(channel, "evaluated", ok=False, message=_model_error(exc))
        return
    _send(channel, "evaluated", ok=True, metrics=metrics)
