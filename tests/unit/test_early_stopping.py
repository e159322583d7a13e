"""Early stopping restores the best epoch: a model whose validation loss falls until epoch 2 and
rises after it ends with epoch 2's weights, straight through or resumed after epoch 3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_store.signature import Signature
from tests.models import torchscript_bytes
from workers.contract.datasets import Dataset
from workers.contract.finetune_spec import Hyperparameters, JobSpec
from workers.finetune.model import load_scripted
from workers.finetune.training import Run

CPU = torch.device("cpu")
SIG = Signature.model_validate(
    {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
    }
)


class Slope(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(self.lin.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _data(slope: float) -> Dataset:
    x = np.array([[1.0], [-1.0]] * 4, dtype=np.float32)  # x² = 1: one full-batch SGD step per epoch
    return Dataset(x, slope * x[:, 0].astype(np.float64), list(range(1, 9)))


def _run(metric: str | None = None) -> Run:
    """Training pulls the slope towards 3, validation wants 1: with lr 0.1 the slope goes
    0.6, 1.08, 1.464, 1.77: validation loss (w-1)² is least after epoch 2 and rises after."""
    torch.set_num_threads(1)
    hp = Hyperparameters(
        epochs=20, batch_size=8, optimizer="sgd", learning_rate=0.1, early_stopping={"patience": 2}
    )
    spec = JobSpec(task="regression", hyperparameters=hp, promote_metric=metric)
    module = load_scripted(torchscript_bytes(Slope()), CPU)
    return Run(module, SIG, _data(3.0), _data(1.0), spec, 0, CPU)


def _slope(run: Run) -> float:
    return float(run.module.lin.weight.detach().reshape(()))


@pytest.mark.parametrize("metric", [None, "valid_loss", "rmse"])  # None: R², the regression default
def test_early_stopping_restores_the_best_epoch(metric: str | None) -> None:
    run = _run(metric)
    losses = []
    while not run.done():
        losses.append(run.train_epoch(lambda _row: None).valid["valid_loss"])
    assert losses[1] < losses[0] and losses[1] < losses[2] < losses[3]  # best at epoch 2, then worse
    assert run.progress.stopped_early and run.progress.epoch == 4 and run.progress.best_epoch == 2
    assert run.restore_best()
    assert _slope(run) == pytest.approx(1.08, abs=1e-5)
    assert run.evaluate()["valid_loss"] == pytest.approx(losses[1])


def test_a_resumed_run_restores_the_best_epoch_from_its_checkpoint() -> None:
    first = _run()
    states = []
    for _ in range(3):
        first.train_epoch(lambda _row: None)
        states.append(first.state_bytes())
    resumed = _run()
    resumed.load_state(states[2])  # the last checkpoint (epoch 3) ...
    resumed.load_best(states[1])  # ... and the best one (epoch 2), as the trainer hands them over
    while not resumed.done():
        resumed.train_epoch(lambda _row: None)
    assert resumed.progress.best_epoch == 2 and resumed.restore_best()
    assert _slope(resumed) == pytest.approx(1.08, abs=1e-5)


def test_without_early_stopping_the_last_epoch_stays() -> None:
    run = _run()
    run.hp = run.hp.model_copy(update={"early_stopping": None, "epochs": 4})
    while not run.done():
        run.train_epoch(lambda _row: None)
    assert not run.restore_best() and _slope(run) > 1.5
