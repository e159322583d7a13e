"""Fixtures for tests that run the platform as real processes (gateway, workers) on free ports."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.conftest as base
from tests.conftest import ADMIN_KEY
from tests.e2e.harness import Stack

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
FAULT_WORKER = "tests.e2e.fault_worker"


def make_env(tmp_path: Path, pg_url: str, redis_prefix: str, redis_url: str | None = None) -> dict[str, str]:
    return {
        "KILN_DATABASE_URL": pg_url,
        "KILN_REDIS_URL": redis_url or base.REDIS_URL,  # read now: chosen at pytest_configure
        "KILN_REDIS_PREFIX": redis_prefix,
        "KILN_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "KILN_DATA_DIR": str(tmp_path / "data"),
        "KILN_CLAIM_IDLE_MS": "1000",
        "KILN_CLAIM_INTERVAL_MS": "200",
        "KILN_HEARTBEAT_TTL_S": "3",
        "KILN_REQUEST_TIMEOUT_S": "30",
        "KILN_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def stack_env(tmp_path: Path, pg_url: str, redis_prefix: str) -> dict[str, str]:
    return make_env(tmp_path, pg_url, redis_prefix)


@pytest.fixture
def stack(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    s = Stack(stack_env, tmp_path)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def make_stack(tmp_path: Path, pg_url: str, redis_prefix: str) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(redis_url: str | None = None, **env: str) -> Stack:
        stack = Stack({**make_env(tmp_path, pg_url, redis_prefix, redis_url), **env}, tmp_path)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


def register_http(url: str, name: str, data: bytes, fmt: str, config: dict[str, Any] | None = None) -> None:
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
        r = c.post("/v1/models", json={"name": name})
        assert r.status_code in (201, 409), r.text
        form = {"format": fmt, **({"config": json.dumps(config)} if config else {})}
        r = c.post(f"/v1/models/{name}/versions", data=form, files={"file": ("m.bin", data)})
        assert r.status_code == 201, r.text


def poll(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
