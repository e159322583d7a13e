"""`kiln sweeps`: the space from --param, the body, the watch lines and the plot."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from service.cli.finetune import JobRequest
from service.cli.main import main
from service.cli.sweeps import parse_param, sweep_body, trial_lines


def test_params_become_space_entries() -> None:
    assert parse_param("learning_rate=log_uniform:1e-4:0.1") == (
        "learning_rate",
        {"type": "log_uniform", "low": 1e-4, "high": 0.1},
    )
    assert parse_param("epochs=int:1:9:2") == ("epochs", {"type": "int", "low": 1, "high": 9, "step": 2})
    assert parse_param("batch_size=choice:16,64") == ("batch_size", {"type": "choice", "values": [16, 64]})
    assert parse_param("optimizer=choice:adam,sgd") == (
        "optimizer",
        {"type": "choice", "values": ["adam", "sgd"]},
    )
    for bad in ("learning_rate", "lr=uniform:1", "lr=uniform:a:b", "lr=normal:0:1", "=choice:1"):
        with pytest.raises(typer.BadParameter):
            parse_param(bad)


def test_the_body_is_a_job_body_plus_search_and_space() -> None:
    req = JobRequest(model="clf", training_file="file-1", seed=3)
    search = {"method": "grid", "max_trials": None, "parallel": 2}
    body = sweep_body(
        req,
        None,
        search,
        ["batch_size=choice:16,64"],
        '{"learning_rate": {"type": "choice", "values": [0.1]}}',
    )
    assert body["search"] == {"method": "grid", "parallel": 2} and body["seed"] == 3
    assert set(body["space"]) == {"batch_size", "learning_rate"} and body["model"] == "clf"
    with pytest.raises(typer.BadParameter, match="space"):
        sweep_body(req, None, search, [], None)


def test_a_bad_param_is_a_usage_error_before_any_request(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sweeps", "create", "--model", "m", "--training-file", "file-1", "-p", "lr=normal:0:1"]
    assert main([*argv, "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "KIND is" in err and "Traceback" not in err


SWEEP = {
    "id": "ftsweep-1",
    "status": "succeeded",
    "search": {"method": "grid", "metric": "accuracy"},
    "space": {
        "learning_rate": {"type": "log_uniform", "low": 0.001, "high": 0.1},
        "batch_size": {"type": "choice", "values": [16, 64]},
    },
    "trials": [
        {"number": 0, "job_id": "ftjob-a", "status": "succeeded", "value": 0.8,
         "hyperparameters": {"learning_rate": 0.002, "batch_size": 16}},
        {"number": 1, "job_id": "ftjob-b", "status": "succeeded", "value": 0.9,
         "hyperparameters": {"learning_rate": 0.03, "batch_size": 64}},
        {"number": 2, "job_id": "ftjob-c", "status": "pruned", "value": None,
         "hyperparameters": {"learning_rate": 0.05, "batch_size": 64}},
    ],
    "best_trial": {"number": 1, "value": 0.9},
}  # fmt: skip


def test_watch_prints_each_change_once() -> None:
    seen: dict[object, str] = {}
    lines = trial_lines(SWEEP, seen)
    assert len(lines) == 4 and "trial 1 succeeded" in lines[1] and "accuracy 0.9" in lines[1]
    assert lines[-1] == "sweep ftsweep-1 succeeded: best trial 1 accuracy 0.9"
    assert trial_lines(SWEEP, seen) == []


def test_plot_draws_the_metric_against_each_hyperparameter(tmp_path: Path) -> None:
    from service.cli.sweep_plot import plot_sweep

    out = tmp_path / "sweep.png"
    plot_sweep(SWEEP, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
