"""`kiln finetune create`: --target-model makes the result a version of the named model."""

from __future__ import annotations

import pytest

from service.cli.finetune import _job_body
from service.cli.main import build_parser


def _body(*args: str) -> dict[str, object]:
    parsed = build_parser().parse_args(
        ["finetune", "create", "--model", "scorer:production", "--training-file", "file-1", *args]
    )
    return _job_body(parsed, client=None)


def test_target_model_flag_goes_into_the_job(capsys: pytest.CaptureFixture[str]) -> None:
    body = _body("--target-model", "scorer", "--promote", "production")
    assert body["target_model"] == "scorer" and body["promote"] == "production" and "suffix" not in body
    assert capsys.readouterr().err == ""


def test_promote_with_a_suffix_says_which_model_it_moves(capsys: pytest.CaptureFixture[str]) -> None:
    body = _body("--suffix", "june", "--promote", "production")
    assert body["suffix"] == "june" and "target_model" not in body
    err = capsys.readouterr().err
    assert "'scorer-june'" in err and "--target-model scorer" in err


def test_suffix_and_target_model_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        _body("--suffix", "june", "--target-model", "scorer")
