"""Usage charged by a worker whose versions run several instances at once (instances > 1):
batches finish concurrently on the instances' threads, and each batch's charges must go out
with that batch's replies, none dropped, none doubled (real Redis, a real Worker thread)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import httpx

from tests.conftest import WorkerThread
from tests.faults import wrapping
from tests.integration.helpers import infer_body, register
from tests.integration.tenancy import new_key, new_tenant
from tests.models import TIMES3_SIGNATURE, FailsOnNegative, torchscript_bytes
from workers.contract.usage import parse_field
from workers.inference import model_cache

TENANTS = ("acme", "globex")
PER_TENANT = 24  # requests, 1 to 3 rows each
CONFIG = {"instances": 3, "max_batch_size": 4, "max_queue_delay_ms": 2}


async def _tenant(client: httpx.AsyncClient, name: str) -> tuple[int, dict[str, str]]:
    """(tenant id, a key's header) of a new tenant that has its own model "m"."""
    await new_tenant(client, name)
    _key_id, auth = await new_key(client, ["infer", "manage"], tenant=name)
    data = torchscript_bytes(FailsOnNegative())
    r = await register(
        client, "m", data, "torchscript", signature=TIMES3_SIGNATURE, config=CONFIG, headers=auth
    )
    assert r.status_code == 201, r.text
    tenants = (await client.get("/v1/tenants")).json()["data"]
    return next(t["id"] for t in tenants if t["name"] == name), auth


def _charged(redis_client, prefix: str, tenant_id: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Requests ("r"), items ("i") and compute seconds ("c") charged to the tenant, all days."""
    totals: dict[str, float] = defaultdict(float)
    for key in redis_client.scan_iter(match=f"{prefix}:usage:{tenant_id}:*"):
        for raw_field, value in redis_client.hgetall(key).items():
            parsed = parse_field(raw_field.decode())
            assert parsed is not None, raw_field
            totals[parsed[3]] += float(value)
    return totals


async def test_concurrent_batches_charge_exactly_what_was_sent(
    client, settings, redis_client, monkeypatch
) -> None:
    # slowed instances: batches of one version overlap on its three instances
    monkeypatch.setattr(model_cache, "load_runner", wrapping(model_cache.load_runner, delay_s=0.03))
    tenants = {name: await _tenant(client, name) for name in TENANTS}
    sent: dict[str, int] = {}
    posts = []
    for name, (_tid, auth) in tenants.items():
        rows = [1 + i % 3 for i in range(PER_TENANT)]
        sent[name] = sum(rows)
        for n, count in enumerate(rows):
            body = infer_body("x", [[n + 1.0, 1.0]] * count, [count, 2])
            posts.append(client.post("/v2/models/m/infer", json=body, headers=auth))
    w = WorkerThread(settings).start()
    try:
        replies = await asyncio.gather(*posts)
    finally:
        w.stop()
    assert [r.status_code for r in replies] == [200] * len(posts), [
        r.text for r in replies if r.status_code != 200
    ]
    for name, (tenant_id, _auth) in tenants.items():
        charged = _charged(redis_client, settings.redis_prefix, tenant_id)
        assert charged["r"] == PER_TENANT, (name, dict(charged))
        assert charged["i"] == sent[name], (name, dict(charged))
        assert charged["c"] > 0, (name, dict(charged))
