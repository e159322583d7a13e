"""POST /v1/embeddings through the official `openai` SDK (unmodified; its HTTP client is the
in-process gateway) on all-MiniLM-L6-v2 served as an hf-encoder version by a real worker: the
embeddings equal sentence-transformers' within 1e-4, as floats and as base64."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from service.settings import Settings
from tests.conftest import WorkerThread
from tests.integration.helpers import register
from tests.integration.test_hf_encoder import bundle_of, model_dir, reference  # noqa: F401 (fixture)
from tests.text_models import add_causal_model


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The first request to MiniLM loads it in a fenced child: far past 20 s on a loaded 2-core
    machine (the suite runs on every core), so this module's requests wait longer."""
    return settings.model_copy(update={"request_timeout_s": 120})


TEXTS = ["A man is eating food.", "Naïve café owners serve crème brûlée.", "東京は日本の首都です。"]


def sdk(client: httpx.AsyncClient, key: str = "") -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=client.app)  # type: ignore[attr-defined]
    http = httpx.AsyncClient(transport=transport, base_url="http://kiln", timeout=60)
    token = key or client.headers["Authorization"].removeprefix("Bearer ")
    return openai.AsyncOpenAI(base_url="http://kiln/v1", api_key=token, http_client=http, max_retries=0)


@pytest.fixture(scope="module")
def minilm_reference(reference: np.ndarray) -> np.ndarray:  # noqa: F811
    from tests.integration.test_hf_encoder import TEXTS as ALL

    return np.stack([reference[ALL.index(t)] for t in TEXTS])


async def test_embeddings_equal_sentence_transformers(
    client: httpx.AsyncClient, worker: WorkerThread, minilm_reference: np.ndarray, settings
) -> None:
    r = await register(client, "minilm", bundle_of(model_dir()), "hf-encoder")
    assert r.status_code == 201, r.text
    api = sdk(client)
    got = await api.embeddings.create(model="minilm", input=TEXTS)
    assert got.object == "list" and got.model == "minilm" and [d.index for d in got.data] == [0, 1, 2]
    floats = np.array([d.embedding for d in got.data], dtype=np.float32)
    assert floats.shape == (3, 384)
    assert np.abs(floats - minilm_reference).max() < 1e-4

    raw = await client.post(
        "/v1/embeddings", json={"model": "minilm:1", "input": TEXTS[0], "encoding_format": "base64"}
    )
    assert raw.status_code == 200, raw.text
    vec = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.abs(vec - minilm_reference[0]).max() < 1e-4
    # the SDK asks for base64 itself when no format is given, and decodes it
    same = await api.embeddings.create(model="minilm", input=TEXTS[0], dimensions=384)
    assert np.abs(np.array(same.data[0].embedding) - minilm_reference[0]).max() < 1e-4

    for bad in (
        {"model": "minilm", "input": TEXTS, "dimensions": 128},
        {"model": "minilm", "input": [1, 2, 3]},
        {"model": "minilm", "input": []},
        {"model": "minilm", "input": [""]},
        {"model": "minilm", "input": ["x"] * 10_000},
        {"model": "minilm", "input": "x", "encoding_format": "int8"},
    ):
        r = await client.post("/v1/embeddings", json=bad)
        assert r.status_code == 400, (bad, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    add_causal_model(settings.resolved_database_url, settings.default_tenant, "gen")
    with pytest.raises(openai.BadRequestError, match="hf-encoder"):
        await api.embeddings.create(model="gen", input="x")
    with pytest.raises(openai.NotFoundError):
        await api.embeddings.create(model="ghost", input="x")


async def test_embeddings_usage_counts_the_tokens_the_worker_tokenised(
    client: httpx.AsyncClient, worker: WorkerThread
) -> None:
    """usage.prompt_tokens is what the worker's tokenizer made of the inputs (the tiny BERT's
    word-level tokenizer: one token per word, no special tokens), per request, also when
    concurrent requests share a batch."""
    import asyncio

    from tests.hf_tiny import tiny_bundle

    assert (await register(client, "tiny-enc", tiny_bundle(), "hf-encoder")).status_code == 201
    inputs = [["the team won the match"], ["chef baked bread", "the final"], ["goal"]]
    replies = await asyncio.gather(
        *(client.post("/v1/embeddings", json={"model": "tiny-enc", "input": texts}) for texts in inputs)
    )
    assert [r.status_code for r in replies] == [200, 200, 200], [r.text for r in replies]
    assert [r.json()["usage"] for r in replies] == [
        {"prompt_tokens": 5, "total_tokens": 5},
        {"prompt_tokens": 5, "total_tokens": 5},
        {"prompt_tokens": 1, "total_tokens": 1},
    ]
