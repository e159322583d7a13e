"""Model code runs in a fenced process (workers/inference/fenced.py): a TorchScript model that reads a host
file through `torch.from_file` gets an error at inference and its answer never carries the
file's bytes; one that maps a host file shared never creates it. The models are planted in the
registry and blob store directly, past every upload check, and the worker's model process runs
without the load-time static checks (tests.fence_targets.serve_unchecked), so that the fence is
all that stands between the model and the host. With the fence off (the control), the same
models do leak and write, so these tests can fail."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from model_store.fence import fence_available
from model_store.registry import Registry
from tests.conftest import WorkerThread
from tests.fence_models import ReadsHostFile, WritesHostFile, plant_version
from tests.integration.helpers import infer_body, register
from tests.models import TIMES3_SIGNATURE, FailsOnNegative, torchscript_bytes
from workers.inference import runners
from workers.inference.fenced import FencedRunner

pytestmark = pytest.mark.skipif(not fence_available(), reason="Landlock is not available on this kernel")
SECRET = b"kiln_secret_token"


async def _plant(client, registry: Registry, settings, name: str, data: bytes) -> None:  # type: ignore[no-untyped-def]
    """A model with a harmless version 1, then `data` as version 2 straight into the stores."""
    r = await register(client, name, torchscript_bytes(FailsOnNegative()), "torchscript", TIMES3_SIGNATURE)
    assert r.status_code == 201, r.text
    tenant_id = registry.ensure_tenant(settings.default_tenant)
    plant_version(registry, registry.get_model(tenant_id, name).id, 2, data, TIMES3_SIGNATURE)


def _worker(settings, fence: str, monkeypatch: pytest.MonkeyPatch) -> WorkerThread:  # type: ignore[no-untyped-def]
    """A worker whose model processes skip the static checks (fenced), or, with the fence off,
    whose in-process runners skip them (the control)."""
    monkeypatch.setattr(FencedRunner, "TARGET", "tests.fence_targets:serve_unchecked")
    if fence == "off":
        for name in ("check_onnx_bytes", "check_torchscript_archive", "check_torchscript_module"):
            monkeypatch.setattr(runners, name, lambda *_: None)
    w = WorkerThread(settings)
    w.worker.config = dataclasses.replace(w.worker.config, fence=fence)  # type: ignore[arg-type]
    return w.start()


@pytest.mark.parametrize("fence", ["required", "off"])
async def test_model_reading_a_host_file_gets_an_error_not_the_bytes(
    client, registry, settings, tmp_path: Path, fence: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "admin.key"
    secret.write_bytes(SECRET)
    await _plant(client, registry, settings, "reader", torchscript_bytes(ReadsHostFile(str(secret), 8)))
    leaked = f"{float(SECRET[0])},{float(SECRET[1])}"  # as the JSON answer would carry them
    w = _worker(settings, fence, monkeypatch)
    try:
        r = await client.post("/v2/models/reader/versions/2/infer", json=infer_body("x", [1, 2], [1, 2]))
    finally:
        w.stop()
    if fence == "off":  # the control: unfenced, the model reads the worker's files
        assert r.status_code == 200 and leaked in r.text, r.text
        return
    assert r.status_code == 500 and r.json()["code"] == "model_error", r.text
    assert leaked not in r.text and "kiln_secret" not in r.text and str(secret) not in r.text


@pytest.mark.parametrize("fence", ["required", "off"])
async def test_model_mapping_a_host_file_shared_never_creates_it(
    client, registry, settings, tmp_path: Path, fence: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "planted.bin"
    await _plant(client, registry, settings, "writer", torchscript_bytes(WritesHostFile(str(target))))
    w = _worker(settings, fence, monkeypatch)
    try:
        r = await client.post("/v2/models/writer/versions/2/infer", json=infer_body("x", [1, 2], [1, 2]))
    finally:
        w.stop()
    if fence == "off":  # the control: unfenced, the warm-up creates the file
        assert target.exists()
        return
    assert r.status_code == 503, r.text
    assert "warmup failed" in r.json()["error"]
    assert not target.exists()
