"""A resumed early-stopping job, run in the real fence: the trainer hands the training process
the last checkpoint and the best epoch's one (both must be readable there), and the result is
the best epoch's model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from model_store.blobs import BlobStore
from model_store.fence import fence_available
from model_store.registry import ResolvedVersion
from model_store.signature import VersionConfig
from tests.models import torchscript_bytes
from tests.unit.test_early_stopping import SIG, Slope, _run
from workers.contract.finetune_check import FenceLimits, file_ref, readable_paths, version_ref
from workers.contract.finetune_messages import Done
from workers.finetune.fence import TrainingProcess

pytestmark = pytest.mark.skipif(not fence_available(), reason="Landlock is not available on this kernel")


def _jsonl(k: float) -> bytes:
    return "".join(f'{{"input": [{x}], "label": {k * x}}}\n' for x in [1.0, -1.0] * 4).encode()


def _args(blobs: BlobStore, states: list[bytes]) -> dict[str, Any]:
    torch.manual_seed(0)
    sha, _ = blobs.put_bytes(torchscript_bytes(Slope()))
    version = ResolvedVersion(1, 1, "slope", 1, "torchscript", sha, SIG, VersionConfig())
    refs = {}
    for name, k in (("train", 3.0), ("valid", 1.0)):
        data_sha, _ = blobs.put_bytes(_jsonl(k))
        refs[name] = file_ref(blobs, SimpleNamespace(id=f"file-{name}", format="jsonl", sha256=data_sha))  # type: ignore[arg-type]
    ckpt = {}
    for key, state in (("checkpoint", states[2]), ("best_checkpoint", states[1])):
        s, _ = blobs.put_bytes(state)
        ckpt[key] = {"path": str(blobs.path_for(s).resolve()), "sha256": s, "epoch": 3}
    hp = {
        "epochs": 20,
        "batch_size": 8,
        "optimizer": "sgd",
        "learning_rate": 0.1,
        "early_stopping": {"patience": 2},
    }
    spec = {"task": "regression", "hyperparameters": hp}
    return {"v": 1, "spec": spec, "seed": 0, "base": version_ref(blobs, version), **refs, **ckpt}


def test_a_resumed_job_ends_with_the_best_epochs_model(tmp_path: Path) -> None:
    run = _run()
    states, losses = [], []
    for _ in range(3):
        losses.append(run.train_epoch(lambda _row: None).valid["valid_loss"])
        states.append(run.state_bytes())
    args = _args(BlobStore(tmp_path / "blobs"), states)
    assert Path(args["best_checkpoint"]["path"]) in readable_paths(args)
    with TrainingProcess(args, readable_paths(args), FenceLimits(gpu=False, threads=1)) as proc:
        while True:
            got = proc.next(1.0)
            if got is not None and isinstance(got[0], Done):
                done = got[0]
                break
    assert done.best_epoch == 2 and done.stopped_early and done.epochs_completed == 4
    assert done.metrics["valid_loss"] == pytest.approx(losses[1])
