"""Gateway CPU per inference request, in-process: the real app (auth, admission, version
resolution, OIP parsing and encoding, metrics, request ids) with the queue replaced by a stub
that answers at once, driven through the raw ASGI interface. No network, no Redis, no model:
what is left is the gateway's own cost per request, and its ceiling in requests/s per process.

    python benchmarks/gateway_overhead.py [--requests 5000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from migrations.upgrade import upgrade
from model_store.signature import VersionConfig
from service.app import create_app
from service.cli.demo import demo_onnx_bytes
from service.settings import Settings
from workers.contract.messages import InferReplyMsg, TensorMeta
from workers.contract.tensors import to_bytes

KEY = "kiln_bench_" + "k" * 40
REPLY = to_bytes(np.zeros((1, 3), np.float32), "FP32")


class StubEngine:
    """Answers every request at once (the queue and the worker are not measured here)."""

    reply_stream = "stub"

    def __init__(self, real: Any) -> None:
        self._real = real

    async def submit(self, stream: str, msg: Any, **_kw: Any) -> None:
        pass

    async def wait(self, request_id: str, timeout_s: float) -> InferReplyMsg:
        return InferReplyMsg(
            request_id=request_id, ok=True, outputs=[TensorMeta("y", "FP32", (1, 3))], tensors=[REPLY]
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def register_demo(state: Any) -> None:
    reg = state.registry
    tenant = reg.ensure_tenant("default")
    reg.create_model(tenant, "demo")
    data = demo_onnx_bytes()
    fd, tmp = state.blobs.new_tempfile()
    os.write(fd, data)
    os.close(fd)
    reg.add_version(
        tenant, "demo", "onnx", tmp, hashlib.sha256(data).hexdigest(), len(data), None, VersionConfig()
    )


async def run(n: int, profile: bool) -> None:
    data_dir = tempfile.mkdtemp(prefix="kiln-gw-")
    settings = Settings(
        data_dir=Path(data_dir),
        redis_url=os.environ.get("KILN_REDIS_URL", "redis://127.0.0.1:6379/0"),
        redis_prefix="gwbench",
        bootstrap_admin_key=KEY,
    )
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}
    )
    headers = [
        (b"host", b"kiln"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {KEY}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v2/models/demo/infer",
        "raw_path": b"/v2/models/demo/infer",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async with app.router.lifespan_context(app):
        state = app.state.kiln
        register_demo(state)
        stub = StubEngine(state.engine)
        state.inference.engine = stub
        for _ in range(500):
            await app(dict(scope, state={}), receive, send)
        assert set(statuses) == {200}, statuses[-3:]
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        start = time.perf_counter()
        for _ in range(n):
            await app(dict(scope, state={}), receive, send)
        elapsed = time.perf_counter() - start
        if prof:
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    per = elapsed / n
    print(
        f"gateway CPU per request (in-process, stub queue): {per * 1e6:.1f} us "
        f"-> at most {1 / per:,.0f} requests/s per gateway process (before HTTP parsing)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    asyncio.run(run(a.requests, a.profile))


if __name__ == "__main__":
    main()
