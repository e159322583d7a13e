"""LoRA adapter versions of an hf-encoder base, served by a real worker (fenced model children)
against the real Redis and PostgreSQL: each adapter is called by its own model name on the OIP
infer route and /v1/embeddings, answers what peft computes on a copy of the base (+ its head),
leaves the base's answers unchanged, and runs in the base's one model process; readiness, the
index and load/unload know adapters; another tenant cannot reach them."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from model_store.blobs import sha256_of
from model_store.registry import Registry
from model_store.signature import VersionConfig
from service.settings import Settings
from tests.conftest import WorkerThread
from tests.encoder_lora import SyntheticAdapter, make_adapter
from tests.hf_tiny import tiny_bundle
from tests.integration.helpers import register
from tests.integration.tenancy import eventually, new_key, new_tenant
from workers.inference.fenced import fenced_of


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The first request to MiniLM loads it in a fenced child: far past 20 s on a loaded 2-core
    machine (the suite runs on every core), so this module's requests wait longer."""
    return settings.model_copy(update={"request_timeout_s": 120})


pytest.importorskip("peft")

TEXTS = ["the team won the final", "the chef baked bread", "garlic soup for dinner", "a coach"]
BATCHING = {"max_batch_size": 8, "max_queue_delay_ms": 2}


def _body(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def _outputs(r: httpx.Response) -> dict[str, np.ndarray]:
    assert r.status_code == 200, r.text
    return {o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"]) for o in r.json()["outputs"]}


def _add_adapter(
    registry: Registry, tenant_id: int, name: str, adapter: SyntheticAdapter, base_id: int, tmp: Path
) -> int:
    """As the trainer registers one: format lora-adapter, its signature, lineage adapter_of."""
    registry.create_model(tenant_id, name)
    upload = tmp / name
    upload.write_bytes(adapter.data)
    row = registry.add_version(
        tenant_id,
        name,
        "lora-adapter",
        upload,
        sha256_of([adapter.data]),
        len(adapter.data),
        adapter.signature,
        VersionConfig.model_validate(BATCHING),
        {"adapter_of": base_id},
    )
    return row.id


async def _setup(
    client: httpx.AsyncClient, registry: Registry, settings: Settings, tmp: Path
) -> tuple[int, SyntheticAdapter, SyntheticAdapter, dict[str, int]]:
    base = tiny_bundle(seed=3)
    r = await register(client, "enc", base, "hf-encoder", config=BATCHING)
    assert r.status_code == 201, r.text
    tenant = registry.ensure_tenant(settings.default_tenant)
    base_id = registry.resolve(tenant, "enc", None).version_id
    cls, emb = make_adapter(base, seed=1, head=("classification", 3)), make_adapter(base, seed=2)
    ids = {
        "enc-cls": _add_adapter(registry, tenant, "enc-cls", cls, base_id, tmp),
        "enc-emb": _add_adapter(registry, tenant, "enc-emb", emb, base_id, tmp),
    }
    return base_id, cls, emb, ids


@pytest.fixture(params=["required", "off"])
def any_worker(request: pytest.FixtureRequest, settings: Settings) -> Iterator[WorkerThread]:
    """A worker with fenced model processes, and one running models in-process (KILN_FENCE=off)."""
    w = WorkerThread(settings)
    w.worker.config = dataclasses.replace(w.worker.config, fence=request.param)
    w.start()
    yield w
    w.stop()


async def test_adapters_by_name_on_one_copy_of_the_base(
    client: httpx.AsyncClient,
    any_worker: WorkerThread,
    registry: Registry,
    settings: Settings,
    tmp_path: Path,
) -> None:
    worker = any_worker
    base_id, cls, emb, ids = await _setup(client, registry, settings, tmp_path)
    plain = _outputs(await client.post("/v2/models/enc/infer", json=_body(TEXTS)))["embedding"]

    got = _outputs(await client.post("/v2/models/enc-cls/infer", json=_body(TEXTS)))
    want = cls.reference(TEXTS)
    assert set(got) == {"logits", "probabilities"}
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
    got_emb = _outputs(await client.post("/v2/models/enc-emb/infer", json=_body(TEXTS)))["embedding"]
    np.testing.assert_allclose(got_emb, emb.reference(TEXTS)["embedding"], rtol=1e-4, atol=1e-5)
    assert np.abs(got_emb - plain).max() > 1e-3

    # concurrent requests of the base and both adapters: each batch is of one version
    calls = [("enc", TEXTS[:2]), ("enc-cls", TEXTS[2:]), ("enc-emb", TEXTS[1:3]), ("enc", TEXTS[3:])] * 3
    replies = await asyncio.gather(*[client.post(f"/v2/models/{m}/infer", json=_body(t)) for m, t in calls])
    for (model, texts), reply in zip(calls, replies, strict=True):
        out = _outputs(reply)
        if model == "enc":
            rows = [TEXTS.index(t) for t in texts]
            np.testing.assert_allclose(out["embedding"], plain[rows], rtol=1e-4, atol=1e-5)
        else:
            ref = (cls if model == "enc-cls" else emb).reference(texts)
            for name in ref:
                np.testing.assert_allclose(out[name], ref[name], rtol=1e-4, atol=1e-5)

    # one model process holds the base; both adapters run on it
    models = worker.worker.cache.models
    base = models[base_id]
    assert len(base.runners) == 1
    assert (fenced_of(base.runners[0]) is None) == (worker.worker.config.fence == "off")
    for vid in ids.values():
        assert (
            models[vid].runners == [] and models[vid].runner is base.runner and models[vid].pool is base.pool
        )
        assert models[vid].base_id == base_id

    # /v1/embeddings: the head-less adapter answers; the head adapter is refused like a head model
    r = await client.post("/v1/embeddings", json={"model": "enc-emb", "input": TEXTS})
    assert r.status_code == 200, r.text
    vectors = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, emb.reference(TEXTS)["embedding"], rtol=1e-4, atol=1e-5)
    r = await client.post("/v1/embeddings", json={"model": "enc-cls", "input": TEXTS})
    assert r.status_code == 400 and "task head" in r.text

    await _by_version_and_async(client, want)

    # readiness and the index
    assert (await client.get("/v2/models/enc-cls/ready")).status_code == 200
    index = {m["name"]: m for m in (await client.post("/v2/repository/index")).json()}
    assert index["enc-cls"]["state"] == "READY" and index["enc-emb"]["state"] == "READY"


async def _by_version_and_async(client: httpx.AsyncClient, want: dict[str, np.ndarray]) -> None:
    """enc-cls by version number, and asynchronously (Prefer: respond-async)."""
    got = _outputs(await client.post("/v2/models/enc-cls/versions/1/infer", json=_body(TEXTS)))
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-5)
    r = await client.post("/v2/models/enc-cls/infer", json=_body(TEXTS), headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text

    async def answered() -> bool:
        return (await client.get(r.headers["location"])).status_code == 200

    assert await eventually(answered, timeout=20)
    got = _outputs(await client.get(r.headers["location"]))
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-5)


async def test_load_unload_and_other_tenants(
    client: httpx.AsyncClient, worker: WorkerThread, registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    base_id, cls, _emb, ids = await _setup(client, registry, settings, tmp_path)
    assert (await client.post("/v2/repository/models/enc-cls/load")).status_code == 200  # loads its base
    assert {base_id, ids["enc-cls"]} <= set(worker.worker.cache.loaded_ids())
    assert (await client.get("/v2/models/enc-cls/ready")).status_code == 200
    assert (await client.get("/v2/models/enc-emb/ready")).status_code == 400  # not loaded yet

    # unloading the base takes its adapters with it; they do not load again without it
    assert (await client.post("/v2/repository/models/enc/unload")).status_code == 200
    assert not {base_id, *ids.values()} & set(worker.worker.cache.loaded_ids())
    r = await client.post("/v2/models/enc-cls/infer", json=_body(TEXTS))
    assert r.status_code == 503 and "base model version" in r.text
    assert (await client.post("/v2/repository/models/enc/load")).status_code == 200
    got = _outputs(await client.post("/v2/models/enc-cls/infer", json=_body(TEXTS)))
    np.testing.assert_allclose(got["logits"], cls.reference(TEXTS)["logits"], rtol=1e-4, atol=1e-5)
    # unloading an adapter leaves its base loaded
    assert (await client.post("/v2/repository/models/enc-cls/unload")).status_code == 200
    loaded = set(worker.worker.cache.loaded_ids())
    assert base_id in loaded and ids["enc-cls"] not in loaded

    # another tenant's key: the adapters are not there for it, by any route
    await new_tenant(client, "rival")
    _kid, auth = await new_key(client, ["infer", "manage"], tenant="rival")
    for model in ("enc-cls", "enc-emb", "enc"):
        r = await client.post(f"/v2/models/{model}/infer", json=_body(TEXTS), headers=auth)
        assert r.status_code == 404, r.text
        r = await client.post("/v1/embeddings", json={"model": model, "input": "a"}, headers=auth)
        assert r.status_code == 404, r.text
        r = await client.post(f"/v2/repository/models/{model}/load", headers=auth)
        assert r.status_code == 404, r.text


async def test_a_dead_base_process_takes_its_adapters_down_and_they_reload(
    client: httpx.AsyncClient, registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    w = WorkerThread(settings)
    w.worker.cache.quarantine.backoff_s = 0.0  # a failed version may load again at once
    w.start()
    try:
        base_id, cls, _emb, ids = await _setup(client, registry, settings, tmp_path)
        for model in ("enc-emb", "enc-cls"):
            _outputs(await client.post(f"/v2/models/{model}/infer", json=_body(TEXTS)))

        async def all_unloaded() -> bool:
            return not {base_id, *ids.values()} & set(w.worker.cache.models)  # unloaded, not just condemned

        _kill_base(w, base_id)  # a batch of an adapter finds the base's process dead
        r = await client.post("/v2/models/enc-cls/infer", json=_body(TEXTS))
        assert r.status_code == 500 and "model process" in r.text, r.text
        assert await eventually(all_unloaded, timeout=10)
        got = _outputs(await client.post("/v2/models/enc-cls/infer", json=_body(TEXTS)))  # a new process
        np.testing.assert_allclose(got["logits"], cls.reference(TEXTS)["logits"], rtol=1e-4, atol=1e-5)

        _kill_base(w, base_id)  # loading an adapter finds it dead
        r = await client.post("/v2/models/enc-emb/infer", json=_body(TEXTS))
        assert r.status_code == 503 and "model process" in r.text, r.text
        assert await eventually(all_unloaded, timeout=10)
        _outputs(await client.post("/v2/models/enc-emb/infer", json=_body(TEXTS)))
    finally:
        w.stop()


def _kill_base(w: WorkerThread, base_id: int) -> None:
    """SIGKILL the base's model process (started by this test's worker)."""
    child = fenced_of(w.worker.cache.models[base_id].runners[0])
    assert child is not None and child.pid is not None
    os.kill(child.pid, signal.SIGKILL)


async def test_adapters_cannot_be_uploaded(client: httpx.AsyncClient) -> None:
    """Only the trainer registers adapters (it sets their base); an upload names no base."""
    adapter = make_adapter(tiny_bundle(seed=3), seed=1)
    r = await register(client, "sneaky", adapter.data, "lora-adapter")
    assert r.status_code in (400, 422), r.text
