"""The command line's one error line (service/cli/client.py, service/cli/main.py): the server's
message from either error shape it writes, never a Python dict repr."""

from __future__ import annotations

import httpx
import pytest

from service.cli.client import KilnClient, KilnError, error_text
from service.cli.main import _one_line


def _line(status: int, **response: object) -> str:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, **response)  # type: ignore[arg-type]

    client = KilnClient("http://kiln", "k", transport=httpx.MockTransport(handler))
    with client, pytest.raises(KilnError) as refused:
        client.get_file("file-x")
    line = _one_line(refused.value)
    assert line is not None
    return line


def test_the_platforms_own_shape() -> None:
    body = {"error": "model 'nope' not found", "code": "not_found"}
    assert _line(404, json=body) == "HTTP 404: model 'nope' not found"


def test_openais_shape_is_its_message() -> None:
    body = {"error": {"message": "file 'file-x' not found", "type": "invalid_request_error", "param": None,
                      "code": "not_found"}}  # fmt: skip
    assert _line(404, json=body) == "HTTP 404: file 'file-x' not found"


def test_openais_param_is_added_only_when_the_message_does_not_name_it() -> None:
    named = {"message": "purpose must be 'fine-tune'", "type": "invalid_request_error", "param": "purpose"}
    assert _line(422, json={"error": named}) == "HTTP 422: purpose must be 'fine-tune'"
    unnamed = {"message": "dataset is invalid: line 2: input", "param": "file", "code": "invalid_dataset",
               "report": {"errors": [{"line": 2}]}}  # fmt: skip
    assert _line(422, json={"error": unnamed}) == "HTTP 422: dataset is invalid: line 2: input (param: file)"


def test_bodies_in_neither_shape() -> None:
    assert _line(502, text="<html><body>Bad Gateway</body></html>") == "HTTP 502: Bad Gateway"
    assert _line(500, text="upstream reset") == "HTTP 500: upstream reset"
    assert _line(418, json={"detail": "teapot"}) == 'HTTP 418: {"detail":"teapot"}'
    assert error_text({"error": {"message": ""}}) is None and error_text(["x"]) is None
    assert error_text({"error": {"message": "m", "param": 3}}) == "m"
