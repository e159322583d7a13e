"""Hostile model code over HTTP, in-process on the real PostgreSQL and Redis: every hostile
TorchScript and ONNX artifact is refused at upload (422 naming the op or tensor, nothing stored),
and the worker refuses one planted in the store behind the registry's back."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from model_store.db import ModelVersionRow
from tests.conftest import WorkerThread
from tests.integration.helpers import infer_body, register
from tests.malicious_models import PAIR_SIGNATURE, hostile_onnx, hostile_torchscript
from tests.models import TIMES3_SIGNATURE, FailsOnNegative, demo_onnx_bytes, torchscript_bytes


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A host file the models try to read (it exists, so nothing fails for lack of it)."""
    path = tmp_path / "secret"
    path.write_bytes(b"AAAABBBBCCCC")
    return path


async def _refused(client, registry, name: str, data: bytes, fmt: str, named: str) -> None:  # type: ignore[no-untyped-def]
    sig = PAIR_SIGNATURE if fmt == "torchscript" else None
    r = await register(client, name, data, fmt, signature=sig)
    assert r.status_code == 422, (name, r.text)
    assert named in r.json()["error"], r.json()
    assert (await client.get(f"/v1/models/{name}")).json()["versions"] == []
    assert not registry.blobs.path_for(hashlib.sha256(data).hexdigest()).exists()


async def test_hostile_torchscript_is_refused_at_upload(
    client, registry, secret: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "written"
    cases = hostile_torchscript(str(secret))
    cases["save"] = hostile_torchscript(str(marker))["save"]
    for case, (data, op) in cases.items():
        await _refused(client, registry, f"ts-{case}".replace("_", "-"), data, "torchscript", op)
    assert not marker.exists()  # the upload's sample run never happened


async def test_hostile_onnx_is_refused_at_upload(client, registry, secret: Path) -> None:
    for case, (data, named) in hostile_onnx(str(secret)).items():
        await _refused(client, registry, f"onnx-{case}".replace("_", "-"), data, "onnx", named)


def _plant(registry, registered: str, data: bytes) -> None:  # type: ignore[no-untyped-def]
    """Put bytes in the store and point a registered version at them, bypassing upload checks."""
    sha, size = registry.blobs.put_bytes(data)
    with registry.sessions() as s:
        row = s.scalars(select(ModelVersionRow).where(ModelVersionRow.sha256 == registered)).one()
        row.sha256, row.size_bytes = sha, size
        s.commit()


async def test_worker_refuses_planted_hostile_artifacts(
    client, worker: WorkerThread, registry, secret: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "written"
    clean = torchscript_bytes(FailsOnNegative())
    r = await register(client, "planted-ts", clean, "torchscript", TIMES3_SIGNATURE)
    assert r.status_code == 201, r.text
    _plant(registry, r.json()["sha256"], hostile_torchscript(str(marker))["save"][0])
    r = await client.post("/v2/models/planted-ts/infer", json=infer_body("x", [1.0, 2.0], [1, 2]))
    assert r.status_code == 503, r.text
    assert "TorchScript op aten::save is not allowed" in r.json()["error"]
    assert not marker.exists()  # warm-up never ran the model

    r = await register(client, "planted-onnx", demo_onnx_bytes(), "onnx")
    assert r.status_code == 201, r.text
    _plant(registry, r.json()["sha256"], hostile_onnx(str(secret))["sparse_external"][0])
    r = await client.post("/v2/models/planted-onnx/infer", json=infer_body("x", [1, 2, 3, 4], [1, 4]))
    assert r.status_code == 503, r.text
    assert re.search(r"external data is refused: sparse tensor values 'S_values'", r.json()["error"])
