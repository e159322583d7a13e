"""The training loop alone: every optimizer and schedule, early stopping, resume equals a straight run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model_store.signature import Signature
from tests.ft_data import MLP_SIGNATURE, jsonl, mlp_bytes, rows
from workers.contract.datasets import parse
from workers.contract.finetune_spec import Hyperparameters, JobSpec
from workers.finetune.model import ModelNotTrainable, load_scripted, resize_head, trainable_names
from workers.finetune.training import Run, lr_factor, split

SIG = Signature.model_validate(MLP_SIGNATURE)
CPU = torch.device("cpu")


def _run(hp: Hyperparameters, seed: int = 3) -> Run:
    ds, _ = parse(jsonl(*rows(120, 4)), "jsonl")
    assert ds is not None
    train, valid = split(ds, 0.25, seed)
    spec = JobSpec(task="classification", hyperparameters=hp)
    return Run(load_scripted(mlp_bytes(), CPU), SIG, train, valid, spec, seed, CPU)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"])
def test_every_optimizer_lowers_the_loss(optimizer: str) -> None:
    hp = Hyperparameters(
        epochs=3,
        batch_size=16,
        learning_rate=0.05 if "sgd" in optimizer else 0.02,
        optimizer=optimizer,
        weight_decay=1e-4,
        l1=1e-5,
        max_grad_norm=5.0,
    )
    run = _run(hp)
    before = run.evaluate()["valid_loss"]
    while not run.done():
        result = run.train_epoch(lambda _row: None)
    assert result.valid["valid_loss"] < before


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine", "step"])
def test_schedules_warm_up_then_follow_their_shape(kind: str) -> None:
    hp = Hyperparameters(epochs=4, lr_scheduler=kind, warmup_steps=4, step_size=1, gamma=0.5)
    f = lr_factor(hp, steps_per_epoch=10)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    end = f(39)
    expected = {
        "constant": 1.0,
        "linear": 1 / 36,
        "cosine": 0.5 * (1 + math.cos(math.pi * 35 / 36)),
        "step": 0.125,
    }[kind]
    assert end == pytest.approx(expected)


def test_early_stopping_stops() -> None:
    hp = Hyperparameters(
        epochs=50, learning_rate=1e-9, optimizer="sgd", early_stopping={"patience": 2, "min_delta": 0.1}
    )
    run = _run(hp)
    while not run.done():
        run.train_epoch(lambda _row: None)
    assert run.progress.stopped_early and run.progress.epoch == 3


def test_resume_from_state_equals_a_straight_run() -> None:
    hp = Hyperparameters(epochs=3, batch_size=8, dropout=0.2, learning_rate=0.01)
    straight = _run(hp)
    full = [straight.train_epoch(lambda _row: None).valid for _ in range(3)]
    first = _run(hp)
    first.train_epoch(lambda _row: None)
    state = first.state_bytes()
    torch.manual_seed(999)  # another process, another global RNG
    resumed = _run(hp)
    resumed.load_state(state)
    rest = [resumed.train_epoch(lambda _row: None).valid for _ in range(2)]
    assert rest == full[1:]


def test_freeze_and_head() -> None:
    module = load_scripted(mlp_bytes(), CPU)
    assert trainable_names(module, ["backbone"]) == ["net.2.weight", "net.2.bias"]
    assert trainable_names(module, ["net.0."]) == ["net.2.weight", "net.2.bias"]
    with pytest.raises(ModelNotTrainable):
        trainable_names(module, ["net"])
    assert resize_head(module, 5) == 3
    assert module(torch.zeros(2, 4)).shape == (2, 5)
    with pytest.raises(ModelNotTrainable):
        resize_head(module, 4)


class Linear64(torch.nn.Module):
    """A regressor with an FP64 input: y = x @ w + b."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_regression_on_a_float64_model() -> None:
    from model_store.signature import Signature as Sig
    from tests.models import torchscript_bytes
    from workers.contract.datasets import Dataset

    sig = Sig.model_validate(
        {
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 3]}],
            "outputs": [{"name": "y", "datatype": "FP64", "shape": [-1, 1]}],
        }
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = x @ np.array([1.5, -2.0, 0.5]) + 0.3
    ds = Dataset(x, y, list(range(1, 201)))
    train, valid = split(ds, 0.2, 1)
    torch.manual_seed(0)
    spec = JobSpec(task="regression", hyperparameters=Hyperparameters(epochs=15, learning_rate=0.05))
    run = Run(load_scripted(torchscript_bytes(Linear64()), CPU), sig, train, valid, spec, 1, CPU)
    before = run.evaluate()
    while not run.done():
        after = run.train_epoch(lambda _row: None).valid
    assert after["valid_loss"] < before["valid_loss"] and after["r2"] > 0.9 > before["r2"]
