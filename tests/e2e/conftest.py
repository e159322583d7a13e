from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY, REDIS_URL
from tests.e2e.harness import Stack


@pytest.fixture
def stack_env(tmp_path: Path, pg_url: str, redis_prefix: str) -> dict[str, str]:
    return {
        "KILN_DATABASE_URL": pg_url,
        "KILN_REDIS_URL": REDIS_URL,
        "KILN_REDIS_PREFIX": redis_prefix,
        "KILN_DATA_DIR": str(tmp_path / "data"),
        "KILN_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "KILN_CLAIM_IDLE_MS": "500",
        "KILN_CLAIM_INTERVAL_MS": "200",
        "KILN_HEARTBEAT_TTL_S": "1.5",
        "KILN_REQUEST_TIMEOUT_S": "30",
        "KILN_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def stack(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    s = Stack(stack_env, tmp_path)
    try:
        yield s
    finally:
        s.stop()
