"""Archive bombs against real processes: the gateway refuses every bomb upload (422) while its
resident memory grows by less than twice the configured upload limit; a bomb planted straight
into the blob store (no upload, no validation) is refused by the worker at load, again with
bounded memory growth, and the worker keeps serving."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import psutil
from sqlalchemy import select

from model_store.blobs import BlobStore
from model_store.db import ModelRow, ModelVersionRow, make_db_engine, make_sessionmaker
from model_store.hf_encoder import encoder_signature
from tests import bombs
from tests.e2e.conftest import AUTH
from tests.e2e.harness import Proc, Stack
from tests.hf_tiny import tiny_bundle

UPLOAD_LIMIT = 8 << 20


def _rss(proc: Proc) -> tuple[int, int]:
    """The process's own resident memory, and the largest of its children's (upload checks run
    in a fenced child per upload, which holds what the check reads)."""
    root = psutil.Process(proc.popen.pid)
    children = [0]
    for child in root.children(recursive=True):
        with suppress(psutil.NoSuchProcess):
            children.append(child.memory_info().rss)
    return int(root.memory_info().rss), max(children)


@contextmanager
def peak_rss(proc: Proc) -> Iterator[Callable[[], tuple[int, int]]]:
    """Samples resident memory in a thread; yields the peaks so far (own, largest child)."""
    peak = list(_rss(proc))
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.002):
            own, child = _rss(proc)
            peak[0], peak[1] = max(peak[0], own), max(peak[1], child)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield lambda: (peak[0], peak[1])
    finally:
        stop.set()
        t.join(5)


def _upload(c: httpx.Client, data: bytes) -> httpx.Response:
    return c.post("/v1/models/enc/versions", data={"format": "hf-encoder"}, files={"file": ("b.tar", data)})


def _infer(c: httpx.Client, version: int) -> httpx.Response:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["the goal"]}]}
    return c.post(f"/v2/models/enc/versions/{version}/infer", json=body)


def _plant(env: dict[str, str], data: bytes, version: int) -> None:
    """Store bytes and register them as a version directly, as if validation had been skipped."""
    sha, _ = BlobStore(Path(env["KILN_DATA_DIR"]) / "artifacts").put_bytes(data)
    db_engine = make_db_engine(env["KILN_DATABASE_URL"])
    with make_sessionmaker(db_engine)() as s:
        model = s.scalars(select(ModelRow).where(ModelRow.name == "enc")).one()
        s.add(
            ModelVersionRow(
                model_id=model.id,
                version=version,
                format="hf-encoder",
                sha256=sha,
                size_bytes=len(data),
                signature=encoder_signature(32).model_dump(mode="json"),
                config={},
            )
        )
        s.commit()
    db_engine.dispose()
    assert hashlib.sha256(data).hexdigest() == sha


def test_bombs_are_refused_with_bounded_memory(make_stack) -> None:  # type: ignore[no-untyped-def]
    tiny = tiny_bundle()
    uploads = [
        bombs.sparse_tar(),
        bombs.zip_of_zeros(),
        bombs.many_directories(),
        bombs.huge_vocab_bundle(tiny),
        bombs.lying_tar(3 * bombs.GIB // 2, b"{}"),
    ]
    stack: Stack = make_stack(KILN_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT), KILN_BUNDLE_EXPANSION_FACTOR="4")
    gateway = stack.start_gateway()
    worker = stack.start_worker("w1")
    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=60) as c:
        assert c.post("/v1/models", json={"name": "enc"}).status_code == 201
        assert _upload(c, tiny).status_code == 201  # warm: every import on the upload path
        assert _upload(c, b"not an archive").status_code == 422
        assert _infer(c, 1).status_code == 200  # warm: the worker has torch and a model loaded

        with peak_rss(gateway) as peak:  # a check of a small refused upload: the baseline
            for _ in range(3):
                assert _upload(c, b"not an archive").status_code == 422
        base, child_base = peak()
        with peak_rss(gateway) as peak:
            for data in uploads * 2:
                r = _upload(c, data)
                assert r.status_code == 422, r.text
        own, child = peak()
        print(
            f"\ngateway peak RSS growth over {len(uploads) * 2} bomb uploads: {(own - base) / 2**20:.1f} MiB;"
            f" the upload check child's: {(child - child_base) / 2**20:.1f} MiB"
        )
        assert own - base < 2 * UPLOAD_LIMIT
        assert child_base > 0 and child - child_base < 2 * UPLOAD_LIMIT
        assert c.get("/v1/models/enc").json()["versions"] == [1]

        planted = [bombs.huge_vocab_bundle(tiny), bombs.zip_of_zeros(), bombs.sparse_tar()]
        for i, data in enumerate(planted):
            _plant(stack.env, data, version=2 + i)
        base, _ = _rss(worker)
        with peak_rss(worker) as peak:
            for i in range(len(planted)):
                r = _infer(c, 2 + i)
                assert r.status_code == 503 and "could not be loaded" in r.text, r.text
        growth = peak()[0] - base
        print(f"worker peak RSS growth over {len(planted)} planted bombs: {growth / 2**20:.1f} MiB")
        assert growth < 2 * UPLOAD_LIMIT
        assert _infer(c, 1).status_code == 200  # the worker keeps serving
    stack.check_alive()
