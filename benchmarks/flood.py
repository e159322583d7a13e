"""Noisy neighbour benchmark: one tenant floods far past its rate limit while another sends at a
steady rate. Prints the steady tenant's p99 latency alone and under the flood, and the ratio
(the acceptance line: ratio <= 2, and the flooding tenant gets 429s).

Real processes against the real PostgreSQL and Redis (a fresh database and key prefix, removed
at the end): one gateway, one worker, the flooding client in its own process.

    python benchmarks/flood.py [--duration 10] [--steady-rps 20] [--flood-concurrency 8] [--flood-limit 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from migrations.upgrade import upgrade  # noqa: E402
from service.cli.demo import demo_onnx_bytes  # noqa: E402
from tests.e2e.harness import Stack  # noqa: E402

PG_ADMIN = os.environ.get("KILN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KILN_TEST_REDIS", "redis://127.0.0.1:6379/0")
ADMIN_KEY = "kiln_benchadmin_" + uuid.uuid4().hex + uuid.uuid4().hex
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}


async def paced(url: str, key: str, rps: float, duration: float) -> tuple[list[float], dict[int, int]]:
    """Open loop: one request every 1/rps seconds whatever the answers; latency per request."""
    latencies: list[float] = []
    codes: dict[int, int] = {}
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=30
    ) as client:

        async def one() -> None:
            started = time.perf_counter()
            r = await client.post("/v2/models/demo/infer", json=BODY)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                latencies.append(time.perf_counter() - started)

        tasks = []
        start = time.perf_counter()
        n = int(rps * duration)
        for i in range(n):
            delay = start + i / rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies, codes


async def flood(url: str, key: str, concurrency: int, duration: float) -> dict[int, int]:
    """Closed loop: `concurrency` callers, each sending back to back until the time is up."""
    codes: dict[int, int] = {}
    deadline = time.monotonic() + duration
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as client:

        async def loop() -> None:
            while time.monotonic() < deadline:
                try:
                    r = await client.post("/v2/models/demo/infer", json=BODY)
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                except httpx.HTTPError:
                    codes[-1] = codes.get(-1, 0) + 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return codes


def p99(values: list[float]) -> float:
    return float(np.percentile(np.array(values), 99)) * 1000


def setup(url: str, flood_limit: float) -> dict[str, str]:
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    keys = {}
    for tenant, limits in (("steady", None), ("flood", {"rate_per_s": flood_limit, "burst": flood_limit})):
        assert admin.post("/v1/tenants", json={"name": tenant, "limits": limits}).status_code == 201
        r = admin.post("/v1/keys", json={"scopes": ["infer", "manage"], "tenant": tenant})
        keys[tenant] = r.json()["key"]
        own = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys[tenant]}"}, timeout=30)
        assert own.post("/v1/models", json={"name": "demo"}).status_code == 201
        r = own.post(
            "/v1/models/demo/versions",
            data={"format": "onnx", "config": '{"max_batch_size": 32}'},
            files={"file": ("demo.onnx", demo_onnx_bytes())},
        )
        assert r.status_code == 201, r.text
        assert own.post("/v2/models/demo/infer", json=BODY).status_code == 200  # loaded
    return keys


def run(args: argparse.Namespace) -> int:
    db = f"kiln_bench_{uuid.uuid4().hex[:8]}"
    prefix = f"kb{uuid.uuid4().hex[:8]}"
    pg_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    flood: subprocess.Popen[bytes] | None = None
    tmp = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    stack = Stack(
        {
            "KILN_DATABASE_URL": pg_url,
            "KILN_REDIS_URL": REDIS_URL,
            "KILN_REDIS_PREFIX": prefix,
            "KILN_DATA_DIR": str(tmp / "data"),
            "KILN_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
            "KILN_LOG_LEVEL": "WARNING",
        },
        tmp,
    )
    try:
        upgrade(pg_url)
        stack.start_gateway()
        stack.start_worker("worker")
        keys = setup(stack.url, args.flood_limit)
        asyncio.run(paced(stack.url, keys["steady"], args.steady_rps, 2))  # warm up
        solo, solo_codes = asyncio.run(paced(stack.url, keys["steady"], args.steady_rps, args.duration))
        flood = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--role",
                "flood",
                "--url",
                stack.url,
                "--key",
                keys["flood"],
                "--flood-concurrency",
                str(args.flood_concurrency),
                "--duration",
                str(args.duration + 2),
            ],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        time.sleep(1)  # let the flood ramp up before measuring
        loaded, loaded_codes = asyncio.run(paced(stack.url, keys["steady"], args.steady_rps, args.duration))
        out, _ = flood.communicate(timeout=args.duration + 60)
        stack.check_alive()
        flood_codes = json.loads(out)
        report(args, solo, solo_codes, loaded, loaded_codes, flood_codes)
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait(10)
        stack.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        stale = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        if stale:
            r.delete(*stale)
    return 0


def report(
    args: argparse.Namespace,
    solo: list[float],
    solo_codes: dict[int, int],
    loaded: list[float],
    loaded_codes: dict[int, int],
    flood_codes: dict[str, int],
) -> None:
    ratio = p99(loaded) / p99(solo)
    print(f"steady tenant: {args.steady_rps:g} req/s for {args.duration:g} s per phase")
    offered = sum(flood_codes.values()) / (args.duration + 2)
    print(
        f"flooding tenant: {args.flood_concurrency} back-to-back callers, {offered:.0f} req/s "
        f"offered against a limit of {args.flood_limit:g} req/s"
    )
    for label, lat, codes in (("solo", solo, solo_codes), ("under flood", loaded, loaded_codes)):
        p50 = np.median(lat) * 1000
        print(f"steady {label:<12} p50 {p50:7.2f} ms  p99 {p99(lat):7.2f} ms  answers {codes}")
    print(f"flooding tenant answers: {flood_codes}")
    print(f"p99 ratio (flood / solo): {ratio:.2f}  ({'within' if ratio <= 2 else 'OVER'} 2x)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--steady-rps", type=float, default=20.0)
    p.add_argument("--flood-concurrency", type=int, default=8, help="back-to-back callers")
    p.add_argument("--flood-limit", type=float, default=10.0)
    p.add_argument("--role", choices=["bench", "flood"], default="bench")
    p.add_argument("--url")
    p.add_argument("--key")
    args = p.parse_args()
    if args.role == "flood":
        codes = asyncio.run(flood(args.url, args.key, args.flood_concurrency, args.duration))
        print(json.dumps({str(k): v for k, v in sorted(codes.items())}))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
