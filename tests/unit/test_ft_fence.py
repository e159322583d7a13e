"""The parent side of the fine-tune fence: one-shot model checks and evaluations in a fenced
child, and the only way a file leaves the child's directory (no links, no paths)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from model_store.blobs import BlobStore
from model_store.fence import fence_available
from model_store.registry import ResolvedVersion
from model_store.signature import Signature, VersionConfig
from tests.ft_data import MLP_SIGNATURE, jsonl, mlp_bytes, rows
from tests.ft_hostile import ReadsInForward
from tests.models import torchscript_bytes
from workers.contract import finetune_check
from workers.contract.finetune_check import (
    CheckFailed,
    FenceLimits,
    check_model,
    evaluate_version,
    file_ref,
    readable_paths,
    version_ref,
)
from workers.contract.finetune_messages import JOB_MESSAGE, Step
from workers.finetune.fence import open_child_file

pytestmark = pytest.mark.skipif(not fence_available(), reason="Landlock is not available on this kernel")
LIMITS = FenceLimits(check_timeout_s=60)


def _args(tmp_path: Path, model: bytes, hp: dict[str, Any] | None = None) -> dict[str, Any]:
    blobs = BlobStore(tmp_path / "blobs")
    sha, _ = blobs.put_bytes(model)
    version = ResolvedVersion(
        1, 1, "m", 1, "torchscript", sha, Signature.model_validate(MLP_SIGNATURE), VersionConfig()
    )
    data_sha, _ = blobs.put_bytes(jsonl(*rows(40, 3)))
    row = SimpleNamespace(id="file-1", format="jsonl", sha256=data_sha)
    spec = {"task": "classification", "hyperparameters": hp or {}, "validation_split": 0.25}
    return {
        "v": 1,
        "spec": spec,
        "seed": 1,
        "base": version_ref(blobs, version),
        "train": file_ref(blobs, row),
    }  # type: ignore[arg-type]


def test_check_counts_parameters_in_a_fence(tmp_path: Path) -> None:
    args = _args(tmp_path, mlp_bytes(), {"freeze": ["backbone"]})
    counts = check_model(args, readable_paths(args), LIMITS)
    assert 0 < counts["trainable_parameters"] < counts["total_parameters"]
    args = _args(tmp_path, mlp_bytes(), {"freeze": ["net"]})
    with pytest.raises(CheckFailed, match="leaves no parameter"):
        check_model(args, readable_paths(args), LIMITS)


def test_evaluating_a_version_runs_its_code_only_in_a_fence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(finetune_check, "EVALUATE_TARGET", "tests.fence_targets:evaluate_unchecked")
    args = _args(tmp_path, mlp_bytes())
    metrics = evaluate_version(args, readable_paths(args), LIMITS)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["valid_loss"] > 0
    secret = tmp_path / "admin.key"
    secret.write_bytes(b"kiln_secret_" + secrets.token_hex(8).encode())
    args = _args(tmp_path, torchscript_bytes(ReadsInForward(str(secret))))
    with pytest.raises(CheckFailed, match=r"Permission denied|denied|open"):
        evaluate_version(args, readable_paths(args), LIMITS)


def test_only_a_plain_regular_file_of_its_own_leaves_the_child_dir(tmp_path: Path) -> None:
    outside = tmp_path / "admin.key"
    outside.write_bytes(b"secret")
    child = tmp_path / "child"
    child.mkdir()
    (child / "checkpoint-1.pt").write_bytes(b"state")
    os.symlink(outside, child / "checkpoint-2.pt")
    os.link(outside, child / "checkpoint-3.pt")
    (child / "big.bin").write_bytes(b"x" * 100)
    fd = open_child_file(child, "checkpoint-1.pt", 1 << 20)
    assert os.read(fd, 100) == b"state"
    os.close(fd)
    for name in ("checkpoint-2.pt", "checkpoint-3.pt", "../admin.key", "/etc/passwd", ".."):
        with pytest.raises(OSError):
            open_child_file(child, name, 1 << 20)
    with pytest.raises(OSError):
        open_child_file(child, "big.bin", 10)


def test_messages_are_versioned_and_typed() -> None:
    msg = JOB_MESSAGE.validate_python(
        {
            "v": 1,
            "type": "step",
            "row": {"step": 1, "epoch": 1, "train_loss": 0.5, "lr": 0.01},
            "seconds": 0.01,
        }
    )
    assert isinstance(msg, Step) and msg.row["step"] == 1
    for bad in (
        {"v": 2, "type": "step", "row": {}, "seconds": 0},
        {"v": 1, "type": "shell", "cmd": "rm"},
        {"v": 1, "type": "epoch", "epoch": 1, "step": 1, "valid": {}, "checkpoint": "x" * 100},
    ):
        with pytest.raises(ValueError):
            JOB_MESSAGE.validate_python(bad)
