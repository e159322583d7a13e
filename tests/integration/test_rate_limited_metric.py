"""kiln_rate_limited_requests_total{tenant} (the alert KilnTenantRateLimited and two dashboard
panels query it) counts every 429 for a rate limit or quota, labelled by the refused tenant."""

from __future__ import annotations

import re

import httpx
import yaml

from tests.conftest import WorkerThread
from tests.integration.helpers import infer_body, operator_metrics, register
from tests.integration.tenancy import new_key, new_tenant
from tests.models import demo_onnx_bytes
from tests.unit.test_deploy_monitoring import ROOT

BODY = infer_body("x", [1, 2, 3, 4], [1, 4])
NAME = "kiln_rate_limited_requests_total"


def _count(text: str, tenant: str) -> float:
    m = re.search(rf'^{NAME}{{tenant="{tenant}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_each_429_counts_for_its_tenant(client: httpx.AsyncClient, worker: WorkerThread) -> None:
    await new_tenant(client, "acme", {"rate_per_s": 0.01, "burst": 2})
    _id, auth = await new_key(client, ["infer", "manage"], tenant="acme")
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx", headers=auth)).status_code == 201
    acme = str((await client.get("/v1/tenants")).json()["data"][-1]["id"])
    before = _count(operator_metrics(client), acme)
    codes = [
        (await client.post("/v2/models/demo/infer", json=BODY, headers=auth)).status_code for _ in range(5)
    ]
    assert codes == [200, 200, 429, 429, 429]
    text = operator_metrics(client)
    assert _count(text, acme) - before == 3, text


def test_the_alert_and_panels_query_the_counter_by_its_labels() -> None:
    alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    rules = [r for g in alerts["groups"] for r in g["rules"] if NAME in r.get("expr", "")]
    assert [r["alert"] for r in rules] == ["KilnTenantRateLimited"]
    assert "by (tenant)" in rules[0]["expr"] and "$labels.tenant" in rules[0]["annotations"]["summary"]
