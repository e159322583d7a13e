"""Which routes answer errors in OpenAI's shape, and how each status reads there
(service/openai_errors.py, service/errors.py): the text and model routes, files and fine-tuning
in OpenAI's `{"error": {"message", "type", "param", "code"}}`; every other route in
`{"error", "code"}`. Each typed error is raised from a route of each family of a small app that
carries the gateway's own handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

from service import errors
from service.openai_errors import error_json, is_openai, is_text

RAISES: dict[str, Callable[[], errors.KilnError]] = {
    "400": lambda: errors.InvalidInput("presence_penalty is not supported", param="presence_penalty"),
    "401": lambda: errors.Unauthorized("invalid API key"),
    "403": lambda: errors.Forbidden("this key lacks the 'finetune' scope"),
    "404": lambda: errors.NotFound("file 'file-x' not found"),
    "409": lambda: errors.Conflict("file is in use by job ftjob-1"),
    "413": lambda: errors.PayloadTooLarge("dataset is over the size limit", param="file"),
    "422": lambda: errors.Unprocessable("purpose must be 'fine-tune'", param="purpose"),
    "429": lambda: errors.RateLimited("rate limit reached", retry_after=2),
    "503": lambda: errors.Unavailable("inference queue is unavailable"),
}
# (status, OpenAI's type, its code) on a files or fine-tuning route: the status is kept (a refused
# fine-tune body is 422, RELIABILITY.md) and kiln's own code stays where OpenAI has none to say
WANT = {
    "400": (400, "invalid_request_error", None),
    "401": (401, "authentication_error", "invalid_api_key"),
    "403": (403, "permission_error", "forbidden"),
    "404": (404, "invalid_request_error", "not_found"),
    "409": (409, "invalid_request_error", "conflict"),
    "413": (413, "invalid_request_error", "payload_too_large"),
    "422": (422, "invalid_request_error", None),
    "429": (429, "rate_limit_error", "rate_limit_exceeded"),
    "503": (503, "server_error", "unavailable"),
}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: int


def _app() -> FastAPI:
    app = FastAPI()
    errors.install(app)
    for prefix in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/models/m/versions", "/v2/models/m"):

        async def fail(status: str) -> None:
            raise RAISES[status]()

        async def validate(body: Body) -> Body:
            return body

        app.add_api_route(f"{prefix}/fail/{{status}}", fail, methods=["GET", "POST"])
        app.add_api_route(f"{prefix}/validate", validate, methods=["POST"])
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://test") as c:
        yield c


def test_which_routes_are_openai_shaped() -> None:
    for method, path in (
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/x"),
        ("POST", "/v1/files"),
        ("GET", "/v1/files/file-1/content"),
        ("DELETE", "/v1/files/file-1"),
        ("POST", "/v1/fine_tuning/jobs"),
        ("POST", "/v1/fine_tuning/jobs/ftjob-1/cancel"),
        ("GET", "/v1/fine_tuning/jobs/ftjob-1/events"),
    ):
        assert is_openai(method, path), (method, path)
    for method, path in (
        ("POST", "/v1/models"),
        ("GET", "/v1/models/x/versions/1"),
        ("POST", "/v2/models/x/infer"),
        ("GET", "/v1/keys"),
        ("POST", "/v1/compression/jobs"),
        ("GET", "/v1/filesystem"),
        ("GET", "/v1/fine_tuning_x"),
    ):
        assert not is_openai(method, path), (method, path)
    # the text body limit is the text routes' alone (not a fine-tune job's JSON body)
    assert is_text("POST", "/v1/chat/completions") and not is_text("POST", "/v1/fine_tuning/jobs")


@pytest.mark.parametrize("status", sorted(RAISES))
@pytest.mark.parametrize("prefix", ["/v1/files", "/v1/fine_tuning/jobs"])
async def test_every_status_on_files_and_fine_tuning_is_openai_shaped(
    client: httpx.AsyncClient, prefix: str, status: str
) -> None:
    r = await client.post(f"{prefix}/fail/{status}")
    exc = RAISES[status]()
    want_status, want_type, want_code = WANT[status]
    assert r.status_code == want_status, r.text
    assert r.json() == {
        "error": {"message": exc.message, "type": want_type, "param": exc.param, "code": want_code}
    }
    if status == "429":
        assert r.headers["Retry-After"] == "2"


async def test_the_same_errors_keep_their_shape_elsewhere(client: httpx.AsyncClient) -> None:
    for prefix in ("/v1/models/m/versions", "/v2/models/m"):
        for status in RAISES:
            r = await client.get(f"{prefix}/fail/{status}")
            exc = RAISES[status]()
            assert r.status_code == exc.status and r.json() == {"error": exc.message, "code": exc.code}


async def test_validation_errors_name_the_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/fine_tuning/jobs/validate", json={"n_epochs": "three"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == "n_epochs" and err["type"] == "invalid_request_error" and err["code"] is None
    assert err["message"].startswith("n_epochs: ")
    r = await client.post("/v1/files/validate", json={"n_epochs": 1, "code": "import os"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "code", r.text
    r = await client.post("/v1/files/validate", content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["param"] is None, r.text
    assert "not valid JSON" in r.json()["error"]["message"]
    r = await client.post("/v1/models/m/versions/validate", json={"n_epochs": "three"})
    assert r.status_code == 422 and set(r.json()) == {"error", "code"}, r.text


async def test_unknown_paths_under_the_family_are_openai_shaped(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/fine_tuning/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["message"] == "Not Found", r.text
    r = await client.get("/v2/nothing-here")
    assert r.status_code == 404 and r.json() == {"error": "Not Found", "code": "http_error"}


def test_a_dataset_report_rides_inside_the_error_object() -> None:
    exc = errors.InvalidDataset("dataset is invalid: line 2: input", {"errors": [{"line": 2}]}, "file")
    body = error_json(422, exc.code, exc.message, exc.param, exc.details, models=False)
    assert body["error"] == {
        "message": "dataset is invalid: line 2: input",
        "type": "invalid_request_error",
        "param": "file",
        "code": "invalid_dataset",
        "report": {"errors": [{"line": 2}]},
    }
    # a model route's 404 is OpenAI's model_not_found; a file's 404 is not
    assert error_json(404, "not_found", "x")["error"]["code"] == "model_not_found"
    assert error_json(404, "not_found", "x", models=False)["error"]["code"] == "not_found"
