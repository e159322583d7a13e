"""OpenAI's hyperparameter names, "auto" and `method` on job creation; anything else is refused
with a message naming the field (422 at the gateway)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from service.finetune.openai_compat import DEFAULT_LR, estimated_finish, method, public_hyperparameters
from service.finetune.schemas import JobCreate

BASE = {"model": "clf", "training_file": "file-1"}


def _hp(**body: Any) -> dict[str, Any]:
    return JobCreate.model_validate({**BASE, **body}).hyperparameters.model_dump()


def test_openai_names_and_auto() -> None:
    hp = _hp(hyperparameters={"n_epochs": 5, "batch_size": 8, "learning_rate_multiplier": 2})
    assert (hp["epochs"], hp["batch_size"], hp["learning_rate"]) == (5, 8, pytest.approx(2 * DEFAULT_LR))
    auto = _hp(hyperparameters={"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"})
    assert auto == _hp()
    supervised = {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 7, "optimizer": "sgd"}},
    }
    hp = _hp(method=supervised)
    assert hp["epochs"] == 7 and hp["optimizer"] == "sgd"
    assert _hp(method={"type": "supervised"}) == _hp()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            {"hyperparameters": {"n_epochs": "3"}},
            'hyperparameters.n_epochs must be a positive integer or "auto"',
        ),
        ({"hyperparameters": {"n_epochs": 2.5}}, "n_epochs must be a positive integer"),
        ({"hyperparameters": {"n_epochs": True}}, "n_epochs must be a positive integer"),
        ({"hyperparameters": {"batch_size": 0}}, "batch_size must be a positive integer"),
        ({"hyperparameters": {"learning_rate_multiplier": 0}}, "learning_rate_multiplier must be a number"),
        ({"hyperparameters": {"learning_rate_multiplier": float("nan")}}, "learning_rate_multiplier"),
        ({"hyperparameters": {"learning_rate_multiplier": 1e9}}, "at most 10000"),
        ({"hyperparameters": {"learning_rate_multiplier": "AUTO"}}, "learning_rate_multiplier"),
        ({"hyperparameters": {"epochs": "auto"}}, "epochs"),  # "auto" only where OpenAI has it
        ({"hyperparameters": {"n_epochs": 3, "epochs": 3}}, "give n_epochs or epochs, not both"),
        ({"hyperparameters": {"learning_rate_multiplier": 2, "learning_rate": 0.1}}, "not both"),
        ({"hyperparameters": {"n_epochs": 100_000}}, "epochs"),
        ({"hyperparameters": []}, "hyperparameters must be an object"),
        ({"method": {"type": "dpo", "dpo": {}}}, "method type 'dpo' is not supported"),
        ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": -1}}}}, "n_epochs"),
        ({"method": {"type": "supervised", "supervised": {"x": 1}}}, "only hyperparameters"),
        ({"method": "supervised"}, "method must be"),
        (
            {"method": {"type": "supervised"}, "hyperparameters": {"n_epochs": 2}},
            "not both",
        ),
        ({"task": "classification", "promote_metric": "perplexity"}, "not a classification metric"),
    ],
)
def test_bad_values_are_refused_clearly(body: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        JobCreate.model_validate({**BASE, **body})
    assert needle in str(err.value)


def test_public_shapes() -> None:
    hp = JobCreate.model_validate({**BASE, "hyperparameters": {"n_epochs": 4, "learning_rate_multiplier": 3}})
    out = public_hyperparameters(hp.hyperparameters)
    assert out["n_epochs"] == out["epochs"] == 4 and out["learning_rate_multiplier"] == pytest.approx(3)
    assert method(hp.hyperparameters)["supervised"]["hyperparameters"]["n_epochs"] == 4


def test_estimated_finish_follows_the_pace_so_far() -> None:
    from datetime import UTC, datetime

    from model_store.db import FineTuneJobRow

    row = FineTuneJobRow(status="running", started_at=datetime.fromtimestamp(1000, UTC))
    row.progress = {"step": 25, "total_steps": 100}
    assert estimated_finish(row, now=1100) == 1400  # 100 s for a quarter: 300 s to go
    row.progress = {"step": 0, "total_steps": 100}
    assert estimated_finish(row, now=1100) is None
    row.status = "succeeded"
    assert estimated_finish(row, now=1100) is None
