"""`kiln finetune create --watch`: the loss curve drawn from what the job reports as it runs."""

from __future__ import annotations

from typing import Any

import pytest

from service.cli.curve import TRAIN, VALID, LossCurve, watch
from service.cli.finetune import progress_line


def _job(
    step: int, epoch: int, loss: float, valid: float | None = None, status: str = "running"
) -> dict[str, Any]:
    p: dict[str, Any] = {"step": step, "epoch": epoch, "train_loss": loss, "total_steps": 20}
    if valid is not None:
        p["valid_loss"] = valid
    return {"id": "ftjob-1", "status": status, "progress": p}


def _updates() -> list[dict[str, Any]]:
    return [
        _job(1, 0, 2.0),
        _job(5, 0, 1.5),
        _job(10, 1, 1.2, valid=1.3),
        _job(15, 1, 0.8, valid=1.3),  # the same epoch's validation again: one point
        _job(20, 2, 0.5, valid=0.9, status="succeeded"),
    ]


def test_the_curve_has_every_point_scaled_between_its_extremes() -> None:
    curve = LossCurve(width=20, height=6)
    for job in _updates():
        curve.add(job)
    lines = curve.lines()
    chart = lines[:6]
    assert chart[0].startswith("        2 ┤") and chart[-1].startswith("      0.5 ┤")
    assert chart[0][11] == TRAIN  # step 1, the highest loss: top left
    assert sum(row.count(VALID) for row in chart) == 2 and curve.valid == {1: 1.3, 2: 0.9}
    assert chart[-1].rstrip().endswith(TRAIN)  # step 20's train loss, the lowest: bottom right
    assert [row[30] for row in chart].count(VALID) == 1  # epoch 2's validation loss, same column
    assert "step (of 20)" in lines[6]


def test_nothing_reported_yet() -> None:
    assert LossCurve().lines() == ["(no loss reported yet)"]


def test_watch_without_a_terminal_prints_the_bar_then_the_curve(capsys: pytest.CaptureFixture[str]) -> None:
    def wait(job_id: str, on_update: Any) -> dict[str, Any]:
        for job in _updates():
            on_update(job)
        return job

    job = watch(wait, "ftjob-1", progress_line)
    err = capsys.readouterr().err
    assert job["status"] == "succeeded"
    assert "100% step 20/20" in err and VALID in err and "validation loss per epoch" in err
