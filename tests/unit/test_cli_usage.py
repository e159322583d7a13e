"""`kiln usage`: the table shows the token columns the server reports (text generation meters
prompt and completion tokens, workers/contract/usage.py), beside requests, items and compute."""

from __future__ import annotations

from typing import Any

import pytest

from service.cli import files
from service.cli.main import main

REPORT = {
    "object": "usage",
    "from": "2026-12-01",
    "to": "2026-12-07",
    "group_by": "model",
    "data": [
        {
            "model": "chat",
            "requests": 3,
            "items": 0,
            "compute_s": 0.0,
            "prompt_tokens": 123,
            "completion_tokens": 45,
        },
        {
            "model": "demo",
            "requests": 2,
            "items": 2,
            "compute_s": 0.5,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        },
    ],
    "total": {"requests": 5, "items": 2, "compute_s": 0.5, "prompt_tokens": 123, "completion_tokens": 45},
}


class _Client:
    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def usage(self, start: str | None, end: str | None, group_by: str) -> dict[str, Any]:
        return REPORT


def test_the_usage_table_has_prompt_and_completion_token_columns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(files, "connect", lambda url, key: _Client())
    assert main(["usage", "--url", "http://kiln.invalid"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (header,) = [ln for ln in lines if "requests" in ln]
    assert "prompt tokens" in header and "completion tokens" in header
    cells = {ln.split()[1]: ln.split() for ln in lines if ln.split()[1:2] in (["chat"], ["total"])}
    assert "123" in cells["chat"] and "45" in cells["chat"]
    assert "123" in cells["total"] and "45" in cells["total"]
