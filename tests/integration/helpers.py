"""Small helpers for API tests."""

from __future__ import annotations

import json
from typing import Any

import httpx


async def register(
    client: httpx.AsyncClient,
    name: str,
    data: bytes,
    fmt: str,
    signature: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    r = await client.post("/v1/models", json={"name": name}, headers=headers)
    assert r.status_code in (201, 409), r.text
    form: dict[str, str] = {"format": fmt}
    if signature is not None:
        form["signature"] = json.dumps(signature)
    if config is not None:
        form["config"] = json.dumps(config)
    return await client.post(
        f"/v1/models/{name}/versions", data=form, files={"file": ("model.bin", data)}, headers=headers
    )


def infer_body(
    name: str, data: list[Any], shape: list[int], datatype: str = "FP32", **extra: Any
) -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **extra}


def operator_metrics(client: httpx.AsyncClient) -> str:
    """What the gateway's operators' port (KILN_METRICS_PORT) serves for this in-process app:
    /metrics is not on the public port."""
    from service import metrics
    from service.ops_metrics import FineTuneJobsCollector

    body, _ = metrics.render(FineTuneJobsCollector(client.app.state.kiln.sessions))  # type: ignore[attr-defined]
    return body.decode()
