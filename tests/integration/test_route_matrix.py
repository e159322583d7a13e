"""Every route of the app's own route table, called with no key, a key of each scope, and
another tenant's key: each answer is the expected 401 / 403 / 404 / 2xx, and no error body
carries a trace, a path or an address.

The required scope of a route is read from its dependencies (service/deps.py `scoped`), so a
new route is covered as soon as it exists; a route this test cannot build a request for fails
here until it gets an entry in PATH_VALUES / BODIES."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
from fastapi.routing import APIRoute

from model_store.sweeps import SweepStore
from service.openai_errors import is_openai
from service.settings import Settings
from tests.conftest import WorkerThread
from tests.ft_data import jsonl, rows
from tests.integration.ft_helpers import TrainerThread, job_body, setup_classifier, upload, wait_for
from tests.integration.helpers import infer_body, register
from tests.integration.sweep_helpers import sweep_body
from tests.integration.tenancy import new_key, new_tenant
from tests.models import demo_onnx_bytes

SCOPES = ("infer", "manage", "finetune", "admin")
OBJECT_PARAMS = {
    "model",
    "name",
    "key_id",
    "version",
    "alias",
    "file_id",
    "job_id",
    "request_id",
    "sweep_id",
    "checkpoint_id",
}  # a tenant's object
TEXT_ROUTES = {("POST", p) for p in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")}
# the body names tenant A's model (and files)
BODY_NAMES_OBJECTS = {
    ("POST", "/v1/fine_tuning/jobs"),
    ("POST", "/v1/fine_tuning/sweeps"),
    ("POST", "/v1/compression/jobs"),
    *TEXT_ROUTES,
}
LEAKS = ("Traceback", 'File "', "/work/", "/tmp/", "/etc/", "127.0.0.1", "redis://", "postgresql", "sqlite")
_seq = itertools.count()
COMPRESSION = {"model": "clf", "method": "quantize"}  # tenant A's model


def iter_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """APIRoutes with full paths; FastAPI 0.165 includes routers lazily, so look inside them."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif hasattr(route, "original_router"):
            yield from iter_routes(route.original_router.routes, prefix + route.include_context.prefix)


def required_scope(route: APIRoute) -> str | None:
    stack = [route.dependant]
    while stack:
        dep = stack.pop()
        scope = getattr(dep.call, "kiln_scope", None)
        if scope is not None:
            return str(scope)
        stack.extend(dep.dependencies)
    return None


def route_table(app: Any) -> list[tuple[str, str, APIRoute]]:
    table = [(m, path, r) for path, r in iter_routes(app.router.routes) for m in sorted(r.methods or ())]
    documented = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    walked = {(m, p) for m, p, r in table if r.include_in_schema}
    assert walked == documented, walked ^ documented
    return table


class World:
    """Tenant A's objects that the routes name."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings) -> None:
        self.client, self.settings = client, settings
        self.train = self.valid = self.job = self.cjob = self.async_id = self.sweep = ""
        self.trained = self.checkpoint = ""  # a finished job and one of its checkpoints

    async def setup(self) -> None:
        assert (await register(self.client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
        r = await self.client.put("/v1/models/demo/aliases/staging", json={"version": 1})
        assert r.status_code == 200
        self.train, self.valid = await setup_classifier(self.client)
        await self.train_one()  # before any other job: its trainer would train those too
        self.job = await self.new_job()
        self.sweep = await self.new_sweep()
        self.cjob = await self.new_compression()
        r = await self.client.post(
            "/v2/models/demo/infer",
            json=infer_body("x", [1, 2, 3, 4], [1, 4]),
            headers={"Prefer": "respond-async"},
        )
        assert r.status_code == 202, r.text
        self.async_id = r.json()["id"]  # an asynchronous result of tenant A
        deadline = time.monotonic() + 30  # its answer also means a worker has loaded (and readied) demo
        while (await self.client.get(f"/v1/async/{self.async_id}")).status_code != 200:
            assert time.monotonic() < deadline, "the asynchronous request was never answered"
            await asyncio.sleep(0.05)

    async def train_one(self) -> None:
        trainer = TrainerThread(self.settings).start()
        try:
            body = job_body(self.train, self.valid, suffix="trained", hyperparameters={"epochs": 1})
            job = await wait_for(
                self.client, (await self.client.post("/v1/fine_tuning/jobs", json=body)).json()["id"]
            )
        finally:
            trainer.stop()
        assert job["status"] == "succeeded", job
        self.trained = job["id"]
        r = await self.client.get(f"/v1/fine_tuning/jobs/{self.trained}/checkpoints")
        self.checkpoint = r.json()["data"][0]["id"]

    async def new_job(self, paused: bool = False) -> str:
        r = await self.client.post("/v1/fine_tuning/jobs", json=job_body(self.train, self.valid))
        assert r.status_code == 200, r.text
        job_id = str(r.json()["id"])
        if paused:
            assert (await self.client.post(f"/v1/fine_tuning/jobs/{job_id}/pause")).status_code == 200
        return job_id

    async def new_compression(self) -> str:
        r = await self.client.post("/v1/compression/jobs", json=COMPRESSION)
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    async def path(self, method: str, path: str) -> str:
        values = {"model": "demo", "name": "demo", "version": "1", "alias": "staging", "tenant": "default"}
        values.update(file_id=self.train, job_id=self.job, request_id=self.async_id, sweep_id=self.sweep)
        if "{checkpoint_id}" in path:  # promoting a checkpoint: the trained job's
            values.update(job_id=self.trained, checkpoint_id=self.checkpoint)
            return path.format(**values)
        if "{key_id}" in path:  # a fresh key of tenant A each time: revoke/rotate must not interfere
            # (a manage key: revoking or rotating needs at least the target key's power)
            values["key_id"] = str((await new_key(self.client, ["manage"]))[0])
        if method == "DELETE" and "{file_id}" in path:
            values["file_id"] = (await upload(self.client, jsonl(*rows(40, 3)))).json()["id"]
        compression = path.startswith("/v1/compression/")
        if compression:
            values["job_id"] = self.cjob
        if method == "POST" and "{job_id}" in path:  # cancel / pause / resume change the job
            new = self.new_compression() if compression else self.new_job(paused=path.endswith("/resume"))
            values["job_id"] = await new
        if method == "POST" and "{sweep_id}" in path:  # cancel / promote change the sweep
            values["sweep_id"] = await self.new_sweep(finished=path.endswith("/promote"))
        return path.format(**values)

    async def new_sweep(self, finished: bool = False) -> str:
        r = await self.client.post(
            "/v1/fine_tuning/sweeps", json=sweep_body(self.train, self.valid, {"method": "grid"})
        )
        assert r.status_code == 200, r.text
        sweep_id = str(r.json()["id"])
        if finished:  # as a trainer leaves it (no trainer runs here): promote needs a finished sweep
            store = SweepStore(self.client.app.state.kiln.sessions)  # type: ignore[attr-defined]
            assert store.finish(sweep_id, "succeeded", {"best_trial": None}, None)
        return sweep_id

    async def body(self, method: str, path: str) -> dict[str, Any]:
        if (method, path) == ("POST", "/v1/files"):
            return {"data": {"purpose": "fine-tune"}, "files": {"file": ("t.jsonl", jsonl(*rows(40, 4)))}}
        if (method, path) == ("POST", "/v1/fine_tuning/jobs"):
            return {"json": job_body(self.train, self.valid)}
        if (method, path) == ("POST", "/v1/fine_tuning/sweeps"):
            return {"json": sweep_body(self.train, self.valid, {"method": "grid"})}
        if (method, path) == ("POST", "/v1/compression/jobs"):
            return {"json": COMPRESSION}
        return await _body(self.client, method, path)


async def _body(client: httpx.AsyncClient, method: str, path: str) -> dict[str, Any]:
    n = next(_seq)
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/v1/models"): {"json": {"name": f"m{n}"}},
        ("POST", "/v1/models/{name}/versions"): {
            "data": {"format": "onnx"},
            "files": {"file": ("m.onnx", demo_onnx_bytes())},
        },
        ("PUT", "/v1/models/{name}/aliases/{alias}"): {"json": {"version": 1}},
        ("PUT", "/v1/models/{name}/sharing"): {"json": {"visibility": "private"}},
        ("POST", "/v1/tenants"): {"json": {"name": f"t{n}"}},
        ("PUT", "/v1/tenants/{tenant}/limits"): {"json": {}},
        ("POST", "/v1/keys"): {"json": {"scopes": ["manage"]}},
        # "demo" is an ONNX model: the text routes answer 400 once the key may use it
        ("POST", "/v1/chat/completions"): {
            "json": {"model": "demo", "messages": [{"role": "user", "content": "x"}]}
        },
        ("POST", "/v1/completions"): {"json": {"model": "demo", "prompt": "x"}},
        ("POST", "/v1/embeddings"): {"json": {"model": "demo", "input": "x"}},
        ("POST", "/v1/fine_tuning/sweeps/{sweep_id}/promote"): {"json": {"alias": "production"}},
    }
    if path.endswith("/infer"):
        return {"json": infer_body("x", [1, 2, 3, 4], [1, 4])}
    return bodies.get((method, path), {})


def expected(scope: str | None, method: str, path: str, who: str) -> str:
    if scope is None:
        return "2xx"
    if who == "none":
        return "401"
    if who == "other":  # another tenant's key holding every non-admin scope
        if scope == "admin":
            return "403"
        names_object = any(f"{{{p}}}" in path for p in OBJECT_PARAMS) or (method, path) in BODY_NAMES_OBJECTS
        return "404" if names_object else "2xx"
    if who in (*scope.split("|"), "admin"):
        return "400" if (method, path) in TEXT_ROUTES else "2xx"
    return "403"


def _class(status: int) -> str:
    return "2xx" if 200 <= status < 300 else str(status)


async def test_route_by_credential_matrix(client, settings, worker: WorkerThread) -> None:
    world = World(client, settings)
    await world.setup()
    creds: dict[str, dict[str, str]] = {"none": {"Authorization": ""}}
    for scope in SCOPES:
        creds[scope] = (await new_key(client, [scope]))[1]
    await new_tenant(client, "other")
    creds["other"] = (await new_key(client, ["infer", "manage", "finetune"], tenant="other"))[1]

    failures = []
    table = route_table(client.app)
    assert len(table) >= 20
    for (method, path, route), who in itertools.product(table, creds):
        scope = required_scope(route)
        url = await world.path(method, path)
        r = await client.request(method, url, headers=creds[who], **await world.body(method, path))
        want, got = expected(scope, method, path, who), _class(r.status_code)
        if want != got:
            failures.append(f"{method} {path} as {who}: want {want}, got {r.status_code} {r.text[:120]}")
        if r.status_code >= 400:
            body = r.json()
            if is_openai(method, url):  # OpenAI's shape on its routes (service/openai_errors.py)
                assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"]), body
            else:
                assert set(body) == {"error", "code"}, (method, path, body)
            leaked = [s for s in LEAKS if s in json.dumps(body)]
            assert not leaked, (method, path, body)
    assert not failures, "\n".join(failures)
