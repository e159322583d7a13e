"""Issue 16's request findings, against a real gateway and worker (processes on free ports):
BYTES tensors with non-strings, a binary request of 10 M empty strings, hostile datasets, a JSON
body sent as curl sends it, JSON errors with positions, timestamps with an offset, and the
rate-limited counter on the operators' port."""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime

import httpx
import pytest

from tests.e2e.conftest import AUTH, register_http
from tests.e2e.harness import Stack
from tests.hf_tiny import tiny_bundle
from tests.integration.test_request_cost import _binary_bytes_body, _echo_bytes_onnx
from tests.models import demo_onnx_bytes

pytestmark = pytest.mark.e2e


@pytest.fixture
def live(stack: Stack) -> Stack:
    stack.start_gateway()
    stack.start_worker("w1")
    register_http(stack.url, "echo", _echo_bytes_onnx(), "onnx")
    register_http(stack.url, "demo", demo_onnx_bytes(), "onnx")
    return stack


def test_bytes_tensors_take_strings_only_and_bounded_counts(live: Stack) -> None:
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as c:
        for bad in ([{}, 64], [None, 5], [{}, -1], [{}, 300_000_000]):
            body = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": bad}]}
            r = c.post("/v2/models/echo/infer", json=body)
            assert r.status_code == 400, (bad, r.text)
            assert "input 's'" in r.json()["error"] and "strings" in r.json()["error"]
            assert len(r.content) < 1000
        good = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "bc"]}]}
        r = c.post("/v2/models/echo/infer", json=good)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == ["a", "bc"], r.text


def test_ten_million_empty_strings_are_refused_and_others_keep_being_answered(live: Stack) -> None:
    body, head_len = _binary_bytes_body(10_000_000)
    gaps: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=30) as h:
            last = time.perf_counter()
            while not done.is_set():
                assert h.get(f"{live.url}/v2/health/live").status_code == 200
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

    poller = threading.Thread(target=poll)
    poller.start()
    headers = {**AUTH, "Inference-Header-Content-Length": str(head_len)}
    try:
        r = httpx.post(f"{live.url}/v2/models/echo/infer", content=body, headers=headers, timeout=60)
    finally:
        done.set()
        poller.join()
    assert r.status_code == 413, r.text
    assert max(gaps) < 1.0, max(gaps)  # main stalled its event loop for 8-18 s here


@pytest.mark.parametrize(
    ("name", "data", "line"),
    [
        (
            "deep.jsonl",
            b'{"input": [1, 2], "label": 0}\n{"input": '
            + b"[" * 6000
            + b"1"
            + b"]" * 6000
            + b', "label": 1}\n',
            2,
        ),
        (
            "digits.jsonl",
            b'{"input": [1, 2], "label": 0}\n{"input": [1, 2], "label": ' + b"1" * 5000 + b"}\n",
            2,
        ),
        ("field.csv", b"a,b,label\n1,2,0\n" + b'"' + b"1" * 200_000 + b'",2,1\n', 3),
    ],
)
def test_hostile_datasets_are_line_numbered_422s(live: Stack, name: str, data: bytes, line: int) -> None:
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as c:
        r = c.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": (name, data)})
        assert r.status_code == 422, r.text
        issues = r.json()["error"]["report"]["errors"]
        assert any(i["line"] == line for i in issues), issues
        assert c.get("/v1/files").json()["data"] == []


def test_a_label_of_three_million_is_refused_by_line_not_built(live: Stack) -> None:
    """On main the dry run built a 3-million-output head in the gateway."""
    rows = b"".join(b'{"text": "t%d", "label": %d}\n' % (i, i % 2) for i in range(20))
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=120) as c:
        register_http(live.url, "tiny", tiny_bundle(), "hf-encoder")
        bad = rows + b'{"text": "b", "label": 3000000}\n'
        train = c.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", bad)}).json()[
            "id"
        ]
        job = {"model": "tiny", "training_file": train, "task": "classification", "suffix": "x"}
        for query in ("?dry_run=true", ""):
            r = c.post(f"/v1/fine_tuning/jobs{query}", json=job)
            assert r.status_code == 422, r.text
            assert "line 21: label" in r.json()["error"]["message"], r.text


def test_json_bodies_as_curl_sends_them_and_json_errors_with_positions(live: Stack) -> None:
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as c:
        # curl -X PUT -d '{"version": 1}': no JSON content type
        r = c.put(
            "/v1/models/demo/aliases/production",
            content=b'{"version": 1}',
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200, r.text
        r = c.post("/v2/models/demo/infer", content=b"", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "empty" in r.json()["error"], r.text
        r = c.post(
            "/v2/models/demo/infer", content=b'{"inputs": [}', headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400 and re.search(r"char \d+|column \d+", r.json()["error"]), r.text


def test_every_timestamp_has_an_offset(live: Stack) -> None:
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as c:
        stamps = [
            c.get("/v1/models/demo").json()["created_at"],
            c.get("/v1/models/demo/versions/1").json()["created_at"],
            *(k["created_at"] for k in c.get("/v1/keys").json()["data"]),
        ]
    for s in stamps:
        assert datetime.fromisoformat(s.replace("Z", "+00:00")).utcoffset() is not None, s


def test_each_429_is_counted_on_the_operators_port(live: Stack) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as c:
        assert c.post("/v1/tenants", json={"name": "acme"}).status_code == 201
        assert c.put("/v1/tenants/acme/limits", json={"rate_per_s": 0.01, "burst": 2}).status_code == 200
        r = c.post("/v1/keys", json={"scopes": ["infer"], "tenant": "acme"})
        assert r.status_code == 201, r.text
        key = {"Authorization": f"Bearer {r.json()['key']}"}
        share = c.put("/v1/models/demo/sharing", json={"visibility": "public"})
        assert share.status_code == 200, share.text
        codes = [
            c.post("/v2/models/default~demo/infer", json=body, headers=key).status_code for _ in range(5)
        ]
    assert codes == [200, 200, 429, 429, 429], codes
    text = httpx.get(f"http://127.0.0.1:{live.gateway_metrics_port}/metrics").text
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("kiln_rate_limited_requests_total{")
    )
    assert counted == 3, text[-2000:]
    public = httpx.get(f"{live.url}/metrics")
    assert public.status_code == 404
