"""`kiln finetune create`: --target-model makes the result a version of the named model."""

from __future__ import annotations

import pytest
import typer

from service.cli.finetune import JobRequest, job_body
from service.cli.main import main


def _body(**options: str) -> dict[str, object]:
    return job_body(JobRequest(model="scorer:production", training_file="file-1", **options), client=None)


def test_target_model_flag_goes_into_the_job(capsys: pytest.CaptureFixture[str]) -> None:
    body = _body(target_model="scorer", promote="production")
    assert body["target_model"] == "scorer" and body["promote"] == "production" and "suffix" not in body
    assert capsys.readouterr().err == ""


def test_promote_with_a_suffix_says_which_model_it_moves(capsys: pytest.CaptureFixture[str]) -> None:
    body = _body(suffix="june", promote="production")
    assert body["suffix"] == "june" and "target_model" not in body
    err = capsys.readouterr().err
    assert "'scorer-june'" in err and "--target-model scorer" in err


def test_suffix_and_target_model_exclude_each_other() -> None:
    with pytest.raises(typer.BadParameter, match="not both"):
        _body(suffix="june", target_model="scorer")


def test_the_command_refuses_both_before_any_request(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["finetune", "create", "--model", "m", "--training-file", "f"]
    argv += ["--suffix", "a", "--target-model", "b"]
    # the URL answers nothing: a usage error must come before any connection
    assert main([*argv, "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "not both" in err and "Traceback" not in err


def test_processes_flag_asks_for_a_distributed_job() -> None:
    assert _body(processes=2)["resources"] == {"processes": 2}  # type: ignore[arg-type]
    assert "resources" not in _body()


def test_lora_flag_and_the_servers_task() -> None:
    body = job_body(JobRequest(model="chat", training_file="file-1", lora=True), client=None)
    assert body["hyperparameters"] == {"lora": {}} and "task" not in body  # causal-lm for a chat model
    ranked = JobRequest(model="chat", training_file="f", lora=True, hyperparameters='{"lora": {"rank": 4}}')
    assert job_body(ranked, client=None)["hyperparameters"] == {"lora": {"rank": 4}}
    assert (
        job_body(JobRequest(model="m", training_file="f", task="regression"), client=None)["task"]
        == "regression"
    )
