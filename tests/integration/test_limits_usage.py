"""Rate limits, concurrency, monthly quotas (Redis, atomic) and usage metering."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import numpy as np
import redis.asyncio as aioredis

from service.errors import RateLimited
from service.tenancy.admission import Admission
from service.tenancy.api_keys import Principal
from service.tenancy.limits import Limits
from tests.conftest import REDIS_URL, WorkerThread
from tests.integration.helpers import infer_body, operator_metrics, register
from tests.integration.tenancy import eventually, new_key, new_tenant
from tests.models import demo_onnx_bytes
from workers.contract.redis_keys import RedisKeys

BODY = infer_body("x", [1, 2, 3, 4], [1, 4])


def _check_429(r) -> None:
    assert r.status_code == 429, r.text
    assert set(r.json()) == {"error", "code"} and r.json()["code"] == "rate_limited"
    for header in ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert header in r.headers, header
    assert int(r.headers["Retry-After"]) >= 1 and r.headers["X-RateLimit-Remaining"] == "0"


async def test_tenant_rate_limit_is_429_with_headers(client, worker: WorkerThread) -> None:
    await new_tenant(client, "acme", {"rate_per_s": 0.01, "burst": 2})
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    _id, auth = await new_key(client, ["infer", "manage"], tenant="acme")
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx", headers=auth)).status_code == 201
    codes = [
        (await client.post("/v2/models/demo/infer", json=BODY, headers=auth)).status_code for _ in range(2)
    ]
    assert codes == [200, 200]
    r = await client.post("/v2/models/demo/infer", json=BODY, headers=auth)
    _check_429(r)
    assert r.headers["X-RateLimit-Limit"] == "2"
    # another key of the same tenant shares the tenant bucket; another tenant does not
    _id2, auth2 = await new_key(client, ["infer"], tenant="acme")
    _check_429(await client.post("/v2/models/demo/infer", json=BODY, headers=auth2))
    assert (await client.post("/v2/models/demo/infer", json=BODY)).status_code == 200
    acme = (await client.get("/v1/tenants")).json()["data"][-1]["id"]
    text = operator_metrics(client)
    assert (
        f'kiln_tenant_inference_requests_total{{model="demo",outcome="rate_limited",tenant="{acme}"}}' in text
    )


async def test_token_bucket_is_atomic_and_refills(redis_prefix) -> None:
    r = aioredis.from_url(REDIS_URL)
    try:
        admission = Admission(r, RedisKeys(redis_prefix))
        slow = Principal(1, 1, frozenset({"infer"}), "p", key_limits=Limits(rate_per_s=0.001, burst=5))
        results = await asyncio.gather(
            *(admission.admit(slow, 30) for _ in range(20)), return_exceptions=True
        )
        assert sum(not isinstance(x, BaseException) for x in results) == 5
        limited = [x for x in results if isinstance(x, BaseException)]
        assert all(isinstance(x, RateLimited) for x in limited)
        assert limited[0].headers["X-RateLimit-Limit"] == "5"
        assert int(limited[0].headers["Retry-After"]) > 100  # one token per 1000 s
        # the key's bucket is its own: another key of the same tenant is not limited by it
        other = Principal(2, 1, frozenset({"infer"}), "q", key_limits=Limits(rate_per_s=0.001, burst=5))
        assert await admission.admit(other, 30) is not None
        fast = Principal(3, 3, frozenset({"infer"}), "f", key_limits=Limits(rate_per_s=50, burst=1))
        await admission.admit(fast, 30)

        async def refilled() -> bool:
            try:
                await admission.admit(fast, 30)
                return True
            except RateLimited:
                return False

        assert await eventually(refilled)
    finally:
        await r.aclose()


async def test_monthly_request_quota(client, worker: WorkerThread) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    _id, auth = await new_key(client, ["infer"], limits={"monthly_requests": 3})
    codes = [
        (await client.post("/v2/models/demo/infer", json=BODY, headers=auth)).status_code for _ in range(4)
    ]
    assert codes == [200, 200, 200, 429]
    r = await client.post("/v2/models/demo/infer", json=BODY, headers=auth)
    _check_429(r)
    assert "monthly" in r.json()["error"] and r.headers["X-RateLimit-Limit"] == "3"


async def test_monthly_compute_quota(client, worker: WorkerThread) -> None:
    await new_tenant(client, "acme", {"monthly_compute_s": 1e-9})
    _id, auth = await new_key(client, ["infer", "manage"], tenant="acme")
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx", headers=auth)).status_code == 201
    assert (await client.post("/v2/models/demo/infer", json=BODY, headers=auth)).status_code == 200
    r = await client.post("/v2/models/demo/infer", json=BODY, headers=auth)
    _check_429(r)
    assert "compute" in r.json()["error"]


async def test_concurrency_limit_is_atomic_and_released(redis_prefix) -> None:
    r = aioredis.from_url(REDIS_URL)
    try:
        admission = Admission(r, RedisKeys(redis_prefix))
        p = Principal(1, 1, frozenset({"infer"}), "p", tenant_limits=Limits(max_concurrent=3))
        results = await asyncio.gather(*(admission.admit(p, 30) for _ in range(10)), return_exceptions=True)
        tickets = [t for t in results if not isinstance(t, BaseException)]
        assert len(tickets) == 3
        assert all(isinstance(e, RateLimited) for e in results if isinstance(e, BaseException))
        await admission.release(tickets[0])
        assert await admission.admit(p, 30) is not None
        # an entry past its deadline no longer counts (a gateway that died leaks nothing)
        q = Principal(2, 2, frozenset({"infer"}), "q", tenant_limits=Limits(max_concurrent=1))
        await admission.admit(q, -1)
        assert await admission.admit(q, 30) is not None
    finally:
        await r.aclose()


async def test_usage_equals_worker_compute_within_1pct(client, worker: WorkerThread) -> None:
    r = await register(
        client, "demo", demo_onnx_bytes(), "onnx", config={"max_batch_size": 32, "max_queue_delay_ms": 20}
    )
    assert r.status_code == 201
    await client.put("/v1/models/demo/sharing", json={"visibility": "public"})
    await new_tenant(client, "acme")
    _acme_key, acme = await new_key(client, ["infer", "manage"], tenant="acme")
    own_key, own = await new_key(client, ["infer"])
    rng = np.random.default_rng(1)

    async def one(auth: dict[str, str], model: str, n: int) -> None:
        x = rng.normal(size=(n, 4)).astype(np.float32)
        r = await client.post(
            f"/v2/models/{model}/infer", json=infer_body("x", x.ravel().tolist(), [n, 4]), headers=auth
        )
        assert r.status_code == 200, r.text

    async def acme_sees_public() -> bool:
        return (await client.get("/v2/models/default~demo", headers=acme)).status_code == 200

    assert await eventually(acme_sees_public)
    jobs = [one(own, "demo", 1 + i % 5) for i in range(30)]
    jobs += [one(acme, "default~demo", 1 + i % 3) for i in range(30)]
    await asyncio.gather(*jobs)  # 60 in flight: under the engine client's 64-connection pool

    today = datetime.now(UTC).date().isoformat()
    mine = (await client.get("/v1/usage", params={"from": today, "to": today, "group_by": "key"})).json()
    theirs = (await client.get("/v1/usage", params={"group_by": "model"}, headers=acme)).json()
    by_day = (await client.get("/v1/usage", params={"group_by": "day"}, headers=acme)).json()
    assert [row["key_id"] for row in mine["data"]] == [own_key]
    assert [row["model"] for row in theirs["data"]] == ["demo"]
    assert by_day["data"][0]["day"] == today and by_day["total"] == theirs["total"]
    assert mine["total"]["requests"] == 30 and theirs["total"]["requests"] == 30
    assert mine["total"]["items"] == sum(1 + i % 5 for i in range(30))
    assert theirs["total"]["items"] == sum(1 + i % 3 for i in range(30))
    charged = mine["total"]["compute_s"] + theirs["total"]["compute_s"]
    measured = worker.sample("kiln_inference_compute_infer_duration_seconds_sum")
    assert measured > 0
    assert abs(charged - measured) <= 0.01 * measured, (charged, measured)
    assert abs(worker.sample("kiln_tenant_compute_seconds_total") - measured) <= 0.01 * measured
    assert worker.sample("kiln_inference_exec_count_total") < 60  # batches were shared across tenants
