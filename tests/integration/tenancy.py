"""Helpers for tenant tests: tenants and keys made through the API with the admin client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx


async def new_tenant(client: httpx.AsyncClient, name: str, limits: dict[str, Any] | None = None) -> None:
    r = await client.post("/v1/tenants", json={"name": name, "limits": limits})
    assert r.status_code == 201, r.text


async def new_key(
    client: httpx.AsyncClient, scopes: list[str], tenant: str | None = None, **extra: Any
) -> tuple[int, dict[str, str]]:
    """(key id, Authorization header) of a fresh key."""
    r = await client.post("/v1/keys", json={"scopes": scopes, "tenant": tenant, **extra})
    assert r.status_code == 201, r.text
    body = r.json()
    return body["id"], {"Authorization": f"Bearer {body['key']}"}


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    """Poll `check` until it holds or `timeout` seconds pass (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False
