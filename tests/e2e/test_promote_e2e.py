"""`promote` on real processes (gateway, worker, trainer): a fine-tune that beats its parent but
not what production serves leaves production where it is, and the job says why, with both values
measured on the same validation data. On main e35e26f production moved to the worse model."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import AUTH
from tests.e2e.harness import Stack
from tests.integration.ft_helpers import job_body, setup_classifier, wait_for

pytestmark = pytest.mark.e2e


async def _job(c: httpx.AsyncClient, train: str, valid: str, **hp: Any) -> dict[str, Any]:
    body = job_body(train, valid, model="clf:1", target_model="clf", promote="production", hyperparameters=hp)
    del body["suffix"]
    r = await c.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    job = await wait_for(c, r.json()["id"], timeout=240)
    assert job["status"] == "succeeded", job
    return job


async def test_promote_never_moves_production_to_a_worse_model(stack: Stack) -> None:
    stack.start_gateway()
    stack.start_worker("w1")
    stack.start_trainer("t1")
    async with httpx.AsyncClient(base_url=stack.url, headers=AUTH, timeout=60) as c:
        train, valid = await setup_classifier(c)
        assert (await c.put("/v1/models/clf/aliases/production", json={"version": 1})).status_code == 200
        strong = await _job(c, train, valid, epochs=4, learning_rate=0.02)
        assert strong["result"]["promotion"]["promoted"] is True, strong["result"]
        assert (await c.get("/v1/models/clf")).json()["aliases"]["production"] == 2
        weak = await _job(c, train, valid, epochs=1, learning_rate=0.01)
        result, promo = weak["result"], weak["result"]["promotion"]
        # it beats its parent (the old rule would have promoted it) but not what production serves
        assert result["parent_metrics"]["accuracy"] < result["metrics"]["accuracy"], result
        assert promo["promoted"] is False and promo["metric"] == "accuracy", promo
        assert promo["against"] == {"model": "clf", "version": 2, "source": "alias"}
        assert promo["result_value"] < promo["against_value"], promo
        assert promo["against_value"] == pytest.approx(strong["result"]["metrics"]["accuracy"])
        assert (await c.get("/v1/models/clf")).json()["aliases"]["production"] == 2
