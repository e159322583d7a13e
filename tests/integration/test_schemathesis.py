"""schemathesis against the gateway's own OpenAPI document, in-process (ASGI): generated
requests (valid and schema-violating) for every operation, with an admin key, must never get
a 5xx and every answer must conform to the document (status code declared, content type, body
schema, headers).

Bounded: EXAMPLES per operation, derandomized, so it runs in about a minute in `make test`."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

with warnings.catch_warnings():  # starlette 1.x prefers `httpx2`; plain httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import ADMIN_KEY, WorkerThread
from tests.models import demo_onnx_bytes

EXAMPLES = 40
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
BASE = "http://testserver"


@pytest.fixture
def api(settings: Settings, worker: WorkerThread) -> Iterator[TestClient]:
    app = create_app(settings)
    with TestClient(app, base_url=BASE, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        client.post("/v1/models", json={"name": "demo"})
        r = client.post(
            "/v1/models/demo/versions", data={"format": "onnx"}, files={"file": demo_onnx_bytes()}
        )
        assert r.status_code == 201, r.text
        yield client


def _send(client: TestClient, case: Any) -> Any:
    kwargs = case.as_transport_kwargs(base_url=BASE, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    kwargs.pop("cookies", None)
    if kwargs.get("files"):  # requests-style parts; httpx wants text or bytes for every value
        kwargs["files"] = [
            (name, (part[0], part[1] if isinstance(part[1], bytes | str) else str(part[1]), *part[2:]))
            for name, part in kwargs["files"]
        ]
    data = kwargs.pop("data", None)
    if isinstance(data, bytes | str):
        kwargs["content"] = data
    elif data is not None:
        kwargs["data"] = data
    response = client.request(**kwargs)
    response.request.read()  # a multipart body is a stream; the checks read the request again
    return response


def test_openapi_schema_holds_no_5xx(api: TestClient) -> None:
    schema = schemathesis.openapi.from_dict(api.app.openapi())  # type: ignore[attr-defined]
    # revoking or rotating keys last: the fuzzer may well pick the admin key's own id
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),
        key=lambda op: op.path.startswith("/v1/keys/{key_id}") and op.method.upper() != "GET",
    )
    assert len(operations) >= 20
    failures: list[str] = []
    for op in operations:

        @given(case=op.as_strategy(GenerationMode.POSITIVE) | op.as_strategy(GenerationMode.NEGATIVE))
        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        def run(case: Any) -> None:
            response = _send(api, case)
            case.validate_response(response, checks=CHECKS)

        try:
            run()
        except Exception as exc:
            failures.append(f"{op.method.upper()} {op.path}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
