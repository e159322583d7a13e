"""Every timestamp the API returns is RFC 3339 with an offset, on PostgreSQL and on SQLite (the
embedded mode), from POST and GET alike."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from migrations.upgrade import upgrade
from service.settings import Settings
from tests.conftest import ADMIN_KEY, REDIS_URL
from tests.integration.helpers import register
from tests.models import demo_onnx_bytes

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


@pytest.fixture(params=["postgresql", "sqlite"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str, redis_prefix: str) -> Settings:
    url = pg_url
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kiln.db'}"
        upgrade(url)
    return Settings(
        data_dir=tmp_path / "data",
        database_url=url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        bootstrap_admin_key=ADMIN_KEY,
    )


def _timestamps(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k.endswith("_at") and v is not None:
                yield f"{path}.{k}", v
            yield from _timestamps(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _timestamps(v, f"{path}[{i}]")


async def test_every_timestamp_has_an_offset(client: httpx.AsyncClient) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    key = await client.post("/v1/keys", json={"scopes": ["infer"], "expires_in_s": 3600})
    assert key.status_code == 201, key.text
    rotated = await client.post(f"/v1/keys/{key.json()['id']}/rotate", json={"overlap_s": 60})
    assert rotated.status_code == 201, rotated.text
    bodies = [key.json()]
    for url in ("/v1/models", "/v1/models/demo", "/v1/models/demo/versions/1", "/v1/keys", "/v1/tenants"):
        r = await client.get(url)
        assert r.status_code == 200, (url, r.text)
        bodies.append(r.json())
    found = [(p, v) for body in bodies for p, v in _timestamps(body)]
    names = {p.rsplit(".", 1)[1] for p, _ in found}
    assert {"created_at", "expires_at"} <= names, found
    bad = [(p, v) for p, v in found if not (isinstance(v, str) and RFC3339.match(v))]
    assert not bad, bad
