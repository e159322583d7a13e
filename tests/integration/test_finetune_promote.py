"""`promote` compares the result with what the alias serves now, on the same validation data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.settings import Settings
from tests.integration.ft_helpers import TrainerThread, job_body, setup_classifier, wait_for
from tests.integration.helpers import register
from tests.models import demo_onnx_bytes


@pytest.fixture
def trainer(settings: Settings) -> Iterator[TrainerThread]:
    t = TrainerThread(settings).start()
    yield t
    t.stop()


async def _job(client: httpx.AsyncClient, train: str, valid: str, model: str, **hp: Any) -> dict[str, Any]:
    body = job_body(train, valid, model=model, target_model="clf", promote="production", hyperparameters=hp)
    del body["suffix"]
    r = await client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    job = await wait_for(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    return job


async def _production(client: httpx.AsyncClient) -> int:
    return int((await client.get("/v1/models/clf")).json()["aliases"]["production"])


async def test_promote_never_replaces_a_better_model_than_the_parent(client, trainer) -> None:
    """Three versions of known accuracy: v1 untrained, v2 well trained, v3 trained a little from
    v1. v3 beats its parent v1 but not v2, which production serves: production stays on v2."""
    train, valid = await setup_classifier(client)
    assert (await client.put("/v1/models/clf/aliases/production", json={"version": 1})).status_code == 200

    strong = await _job(client, train, valid, "clf:1", epochs=4, learning_rate=0.02)
    promo = strong["result"]["promotion"]
    assert strong["fine_tuned_model"] == "clf:2" and promo["promoted"] is True, promo
    assert promo["metric"] == "accuracy" and promo["against"] == {
        "model": "clf",
        "version": 1,
        "source": "alias",
    }
    assert promo["against_value"] == pytest.approx(strong["result"]["parent_metrics"]["accuracy"])
    assert await _production(client) == 2
    v2_accuracy = strong["result"]["metrics"]["accuracy"]

    weak = await _job(client, train, valid, "clf:1", epochs=1, learning_rate=0.01)
    result = weak["result"]
    assert weak["fine_tuned_model"] == "clf:3"
    # the old rule (beat the parent) would have promoted it
    assert result["parent_metrics"]["accuracy"] < result["metrics"]["accuracy"] < v2_accuracy, result
    promo = result["promotion"]
    assert promo["promoted"] is False and result["promoted"] is False, promo
    assert promo["against"] == {"model": "clf", "version": 2, "source": "alias"}
    # v2 evaluated again by the trainer, on the same validation data: the same accuracy
    assert promo["against_value"] == pytest.approx(v2_accuracy)
    assert promo["result_value"] == pytest.approx(result["metrics"]["accuracy"])
    assert await _production(client) == 2


async def test_promote_refuses_when_the_alias_serves_what_cannot_be_compared(client, trainer) -> None:
    train, valid = await setup_classifier(client)
    r = await register(client, "clf", demo_onnx_bytes(), "onnx")
    assert r.status_code == 201 and r.json()["version"] == 2, r.text
    assert (await client.put("/v1/models/clf/aliases/production", json={"version": 2})).status_code == 200

    job = await _job(client, train, valid, "clf:1", epochs=4, learning_rate=0.02)
    promo = job["result"]["promotion"]
    assert job["result"]["metrics"]["accuracy"] > job["result"]["parent_metrics"]["accuracy"]
    assert promo["promoted"] is False and "cannot be compared" in promo["reason"], promo
    assert "onnx" in promo["reason"] and promo["against"]["version"] == 2
    assert await _production(client) == 2
