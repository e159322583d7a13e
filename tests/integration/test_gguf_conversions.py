"""A GGUF base is dequantised once: the fine-tune dry run (the gateway's fenced model check)
converts it on its first load and keeps the bundle in the conversion cache next to the blob
store, keyed by the GGUF blob's sha256 (model_store/conversions.py); later checks, and the trainer,
load that bundle instead. Conversions are counted inside the fenced child."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from model_store import conversions
from model_store.blobs import BlobStore
from model_store.fence import fence_available
from model_store.hf_causal_lm import causal_lm_signature
from model_store.registry import ResolvedVersion
from model_store.signature import VersionConfig
from service.settings import Settings
from tests.causal_tiny import tiny_gguf
from tests.integration.ft_helpers import upload
from tests.integration.helpers import register
from workers.contract import finetune_check
from workers.contract.finetune_check import readable_paths, version_ref


def _chat(n: int = 8) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": "A."}]}
        for i in range(n)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


async def test_a_second_dry_run_on_a_gguf_base_does_not_dequantise_again(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(finetune_check, "CHECK_TARGET", "tests.fence_targets:check_counting_conversions")
    data = tiny_gguf(tmp_path / "tiny.gguf", context=64)
    sha = hashlib.sha256(data).hexdigest()
    r = await register(client, "tiny-gguf", data, "hf-causal-lm")
    assert r.status_code == 201, r.text
    chat = (await upload(client, _chat(), "chat.jsonl")).json()["id"]
    body = {"model": "tiny-gguf", "training_file": chat, "hyperparameters": {"lora": {}}}
    cache = settings.blob_dir / conversions.SUBDIR
    assert conversions.cached(cache, sha) is None

    first = await client.post("/v1/fine_tuning/jobs?dry_run=true", json=body)
    assert first.status_code == 200, first.text
    assert first.json()["estimate"]["gguf_conversions"] == 1
    hit = conversions.cached(cache, sha)
    assert hit is not None and hashlib.sha256(hit[0].read_bytes()).hexdigest() == hit[1]

    second = await client.post("/v1/fine_tuning/jobs?dry_run=true", json=body)
    assert second.status_code == 200, second.text
    again = second.json()["estimate"]
    assert again["gguf_conversions"] == 0  # loaded from the converted bundle
    same = ("total_parameters", "trainable_parameters", "tokens", "loss_tokens")
    assert {k: again[k] for k in same} == {k: first.json()["estimate"][k] for k in same}


async def test_a_dry_run_loads_the_conversion_the_generation_worker_made(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new user's case: `chat` answered once (the generation worker converted its GGUF file),
    then a fine-tune dry run on it: the dry run does not dequantise the GGUF file again."""
    from workers.generation.fenced import GenLoadSettings, load_backend

    monkeypatch.setattr(finetune_check, "CHECK_TARGET", "tests.fence_targets:check_counting_conversions")
    data = tiny_gguf(tmp_path / "tiny.gguf", context=64)
    sha = hashlib.sha256(data).hexdigest()
    assert (await register(client, "tiny-gguf", data, "hf-causal-lm")).status_code == 201
    mode = "required" if fence_available() else "auto"
    blob = BlobStore(settings.blob_dir).path_for(sha)
    load_backend(_version(sha), blob, GenLoadSettings(mode=mode, threads=1)).close()
    assert conversions.cached(settings.blob_dir / conversions.SUBDIR, sha) is not None

    chat = (await upload(client, _chat(), "chat.jsonl")).json()["id"]
    body = {"model": "tiny-gguf", "training_file": chat, "hyperparameters": {"lora": {}}}
    r = await client.post("/v1/fine_tuning/jobs?dry_run=true", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["estimate"]["gguf_conversions"] == 0


def _version(sha: str, fmt: str = "hf-causal-lm") -> ResolvedVersion:
    return ResolvedVersion(1, 1, "tiny", 1, fmt, sha, causal_lm_signature(), VersionConfig())


def test_every_fenced_child_is_handed_the_conversion_keyed_by_the_blob_sha256(tmp_path: Path) -> None:
    """What each fenced fine-tune child gets (version_ref: the trainer, the dry run, promotion):
    the cached bundle and its recorded sha256 when the GGUF blob has one, readable through the
    fence; without one, the model check's request to convert; nothing for other formats."""
    blobs = BlobStore(tmp_path / "blobs")
    data = b"GGUF" + b"\0" * 60
    sha = hashlib.sha256(data).hexdigest()
    fd, tmp = blobs.new_tempfile()
    with open(fd, "wb") as f:
        f.write(data)
    blobs.commit(tmp, sha)
    assert "converted" not in version_ref(blobs, _version(sha)) and "convert" not in version_ref(
        blobs, _version(sha)
    )
    assert version_ref(blobs, _version(sha), convert=True)["convert"] is True
    assert "convert" not in version_ref(blobs, _version(sha, "onnx"), convert=True)

    produced = tmp_path / "converted.tar"
    produced.write_bytes(b"a bundle")
    cache = conversions.cache_dir_for(blobs.path_for(sha), sha)
    assert cache == blobs.root / conversions.SUBDIR
    conversions.keep(cache, sha, produced, 1 << 20)
    ref = version_ref(blobs, _version(sha), convert=True)
    assert "convert" not in ref
    assert ref["converted"] == {
        "path": str((cache / f"{sha}.tar").resolve()),
        "sha256": hashlib.sha256(b"a bundle").hexdigest(),
    }
    assert Path(ref["converted"]["path"]) in readable_paths({"base": ref})
    assert "converted" not in version_ref(blobs, _version(sha, "onnx"))
    with pytest.raises(ValueError, match="sha256"):
        conversions.keep(cache, "../" + sha[3:], produced, 1 << 20)
