"""Access policy in-process: the priority cap a key is given reaches the request path, and the
model allowlist applies to asynchronous results and the repository index."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from model_store.signature import VersionConfig
from service.inference.policy import request_policy
from service.tenancy import api_keys as keys
from tests.conftest import WorkerThread
from tests.integration.helpers import infer_body, register
from tests.models import demo_onnx_bytes

BODY = infer_body("x", [1, 2, 3, 4], [1, 4])


async def test_a_keys_priority_cap_is_set_inherited_and_applied(client, registry) -> None:
    r = await client.post("/v1/keys", json={"scopes": ["manage", "infer"], "priority_cap": 2})
    assert r.status_code == 201 and r.json()["priority_cap"] == 2
    capped = r.json()["key"]
    auth = {"Authorization": f"Bearer {capped}"}
    child = await client.post("/v1/keys", json={"scopes": ["infer"]}, headers=auth)
    assert child.json()["priority_cap"] == 2  # the creator's cap by default
    better = await client.post("/v1/keys", json={"scopes": ["infer"], "priority_cap": 1}, headers=auth)
    assert better.status_code == 403, better.text

    principal = keys.lookup(registry.sessions, child.json()["key"])
    assert principal is not None and principal.priority_cap == 2
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    version = registry.resolve(principal.tenant_id, "demo", None)
    version = replace(version, config=VersionConfig(priority_levels=3))
    state = client.app.state.kiln
    policy = request_policy(version, {"priority": 1}, principal, state.inference.keys, state.settings)
    assert policy.priority == 2  # asked for the highest level, capped by the key


async def test_the_allowlist_applies_to_async_results_and_the_index(client, worker: WorkerThread) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    r = await client.post("/v2/models/demo/infer", json=BODY, headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    request_id = r.json()["id"]
    deadline = time.monotonic() + 30
    while (await client.get(f"/v1/async/{request_id}")).status_code != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    other = await client.post("/v1/keys", json={"scopes": ["infer"], "models": ["other"]})
    auth = {"Authorization": f"Bearer {other.json()['key']}"}
    assert (await client.get(f"/v1/async/{request_id}", headers=auth)).status_code == 403
    assert (await client.post("/v2/repository/index", headers=auth)).json() == []
    assert [m["name"] for m in (await client.post("/v2/repository/index")).json()] == ["demo"]
