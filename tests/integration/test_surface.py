"""The hardened surface: refused uploads (ONNX external data outside the version, oversize,
URLs), switched-off docs. Pickle and tampered bytes are in test_api.py."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from service.settings import Settings
from tests.integration.helpers import register
from tests.models import demo_onnx_bytes, onnx_with_external_data

UPLOAD_LIMIT = 64 << 10


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_upload_bytes": UPLOAD_LIMIT, "docs_enabled": False})


def _no_reader(fifo: Path) -> bool:
    """True when nobody holds the FIFO open for reading (opening it to write fails ENXIO)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        return exc.errno == errno.ENXIO
    os.close(fd)
    return False


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink"])
async def test_onnx_external_data_outside_the_version_is_refused(client, settings, tmp_path, kind) -> None:
    # a FIFO as the target: any attempt to read it would block; nothing may open it
    fifo = tmp_path / "secret.fifo"
    os.mkfifo(fifo)
    upload_dir = settings.blob_dir / "tmp"  # where the upload is spooled before validation
    upload_dir.mkdir(parents=True, exist_ok=True)
    location = {
        "traversal": "../../../" + str(fifo.relative_to(fifo.anchor)),
        "absolute": str(fifo),
        "symlink": "weights.bin",
    }[kind]
    if kind == "symlink":
        (upload_dir / "weights.bin").symlink_to(fifo)
    r = await register(client, "ext", onnx_with_external_data(location), "onnx")
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"error", "code"} and "external data" in body["error"]
    assert str(tmp_path) not in body["error"] and ".." not in body["error"]
    assert _no_reader(fifo)
    assert (await client.get("/v1/models/ext")).json()["versions"] == []


async def test_oversize_upload_is_413_and_nothing_kept(client, settings) -> None:
    r = await register(client, "big", b"\x08" * (UPLOAD_LIMIT + 1), "onnx")
    assert r.status_code == 413, r.text
    assert set(r.json()) == {"error", "code"}
    assert (await client.get("/v1/models/big")).json()["versions"] == []
    assert list((settings.blob_dir / "tmp").iterdir()) == []
    r = await register(client, "small", demo_onnx_bytes(), "onnx")
    assert r.status_code == 201  # under the limit


async def test_no_registration_from_urls(client) -> None:
    await client.post("/v1/models", json={"name": "u"})
    r = await client.post(
        "/v1/models/u/versions", data={"format": "onnx", "url": "http://169.254.169.254/latest/meta-data/"}
    )
    assert r.status_code == 422  # a file is required; a URL is never fetched
    assert "169.254" not in r.text


async def test_docs_and_openapi_can_be_switched_off(client) -> None:
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert (await client.get(path)).status_code == 404
    assert (await client.get("/v2/health/live")).status_code == 200
