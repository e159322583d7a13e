"""The messages between a trainer and its fenced training process (workers/finetune/child.py).

Each is one JSON header on the fence's channel, versioned (`v`) and typed (`type`); the parent
validates every header against these models before it acts on it (the child runs tenant code, so
what it sends is untrusted input). Files are never sent inline: a checkpoint or the exported
result is a file in the child's temporary directory, named here; the parent opens it itself.

child -> parent, during a job (train_main):
  started  the model is built and the parent evaluated: device, row counts, total steps,
           parent_metrics, resumed_epoch (the checkpoint it resumed from, or null), processes
           (a distributed job: only rank 0 sends started, step, epoch and done; the other
           ranks send only error, or exit with code 0 when their training is done)
  step     one optimizer step: row {step, epoch, train_loss, lr}, seconds
  epoch    one finished epoch: epoch, step, valid (validation metrics), checkpoint (file name in
           the child's temp dir); its step rows are the `step` messages before it
  done     the final metrics, epochs_completed, stopped_early, best_epoch (the epoch early
           stopping restored, or null), trained_tokens (text models, else null), format,
           signature, artifact (file name in the child's temp dir); one buffer: JSON {lines,
           labels, predicted, parent_predicted[, probabilities]} for the results file
  error    the job cannot go on: code (a readable class, or "" for the model's own error), message
child -> parent, one answer each: checked (check_main), evaluated (evaluate_main), exported
  (export_main: a checkpoint's weights in the job's model, exported as a version artifact).
parent -> child: nothing during a job (closing the pipe stops it); one request for check/evaluate.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

VERSION = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,63}$")


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint-{epoch}.pt"


def plain_name(name: str) -> bool:
    """A file name the parent will open in the child's temp dir: no path, no dot-dot."""
    return bool(_NAME.match(name)) and ".." not in name


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


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: Literal[1]


class Started(_Msg):
    type: Literal["started"]
    device: str = Field(max_length=16)
    train_rows: int = Field(ge=0)
    valid_rows: int = Field(ge=0)
    total_steps: int = Field(ge=0)
    parent_metrics: dict[str, float | bool]
    resumed_epoch: int | None
    processes: int = Field(default=1, ge=1, le=64)  # ranks of a distributed job


class Step(_Msg):
    type: Literal["step"]
    row: dict[str, float | int]
    seconds: float = Field(ge=0)


class Epoch(_Msg):
    type: Literal["epoch"]
    epoch: int = Field(ge=1)
    step: int = Field(ge=0)
    valid: dict[str, float | bool]
    checkpoint: str = Field(max_length=64)


class Done(_Msg):
    type: Literal["done"]
    metrics: dict[str, float | bool]
    epochs_completed: int = Field(ge=0)
    stopped_early: bool
    best_epoch: int | None = Field(default=None, ge=1)
    trained_tokens: int | None = Field(default=None, ge=0)
    format: Literal["torchscript", "hf-encoder", "lora-adapter"]
    signature: dict[str, Any]
    artifact: str = Field(max_length=64)


class Error(_Msg):
    type: Literal["error"]
    code: str = Field(max_length=64)
    message: str = Field(max_length=1000)


JobMessage = Annotated[Started | Step | Epoch | Done | Error, Field(discriminator="type")]
JOB_MESSAGE: TypeAdapter[Started | Step | Epoch | Done | Error] = TypeAdapter(JobMessage)


class Checked(_Msg):
    """check_main's answer; `converted`: the file in the child's temp dir holding the bundle a
    GGUF base was converted into (asked for by the base's "convert"), for the conversion cache."""

    type: Literal["checked"]
    ok: bool
    counts: dict[str, int] = Field(default_factory=dict)
    message: str = Field(default="", max_length=1000)
    converted: str = Field(default="", max_length=64)


class Exported(_Msg):
    """export_main's answer: the checkpoint's model exported as a version artifact (a file in
    the child's temp dir), its format and signature."""

    type: Literal["exported"]
    ok: bool
    artifact: str = Field(default="", max_length=64)
    format: Literal["torchscript", "hf-encoder", "lora-adapter", ""] = ""
    signature: dict[str, Any] = Field(default_factory=dict)
    message: str = Field(default="", max_length=1000)


class Evaluated(_Msg):
    type: Literal["evaluated"]
    ok: bool
    metrics: dict[str, float | bool] = Field(default_factory=dict)
    message: str = Field(default="", max_length=1000)
