"""What the worker's generation loop costs: the deterministic test backend (tests/
generation_backend.py) driven directly (the baseline: submit, poll until every request ends)
against the same backend behind the loop (enqueue on the real Redis, chunks read back from the
reply stream), in the same run; and how long a cancel takes to free its sequence (SET of the
cancel key -> the backend's running count drops), the issue's "within 1 s".

    python benchmarks/gen_loop.py [--requests 32] [--tokens 64] [--step-ms 2] [--cancels 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from migrations.upgrade import upgrade  # noqa: E402
from model_store.blobs import BlobStore  # noqa: E402
from model_store.db import make_db_engine, make_sessionmaker  # noqa: E402
from model_store.registry import Registry  # noqa: E402
from tests.generation_backend import StepBackend, register_gen_version  # noqa: E402
from tests.integration.gen_helpers import Replies, enqueue  # noqa: E402
from workers.contract.generation import GenParams, GenRequestMsg  # noqa: E402
from workers.contract.redis_keys import RedisKeys  # noqa: E402
from workers.generation.config import GenConfig  # noqa: E402
from workers.generation.loop import GenerationLoop  # noqa: E402

REDIS_URL = os.environ.get("KILN_TEST_REDIS", "redis://127.0.0.1:6379/0")


def baseline(n: int, tokens: int, step_s: float) -> float:
    backend = StepBackend(step_s, context_length=tokens + 8)
    started = time.perf_counter()
    for i in range(n):
        params = GenParams(max_tokens=tokens)
        backend.submit(GenRequestMsg(str(i), "r", 0, 0, 1, "m", "completion", True, params, prompt="hi"))
    left = n
    while left:
        left -= sum(1 for ev in backend.poll(0.005) if ev.done)
    backend.close()
    return time.perf_counter() - started


def through_loop(r: redis.Redis, keys: RedisKeys, vid: int, n: int, tokens: int) -> float:
    replies = Replies(r, keys)
    started = time.perf_counter()
    rids = [enqueue(r, keys, vid, max_tokens=tokens) for _ in range(n)]
    for rid in rids:
        replies.until(rid, timeout=300)
    return time.perf_counter() - started


def cancel_latency(
    r: redis.Redis, keys: RedisKeys, vid: int, loop: GenerationLoop, cancels: int
) -> list[float]:
    out: list[float] = []
    replies = Replies(r, keys)
    for _ in range(cancels):
        rid = enqueue(r, keys, vid, max_tokens=10_000)
        replies.until(rid, n=1)
        backend = loop.backends.hosted[vid].backend
        started = time.perf_counter()
        r.set(keys.gen_cancel(rid), 1, ex=60)
        while backend.stats().running:
            time.sleep(0.0005)
        out.append(time.perf_counter() - started)
        replies.until(rid)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--step-ms", type=float, default=2.0)
    p.add_argument("--cancels", type=int, default=20)
    args = p.parse_args()
    os.environ["KILN_TEST_GEN_STEP_MS"] = str(args.step_ms)
    work = Path(tempfile.mkdtemp(prefix="kiln-gen-loop-"))
    upgrade(f"sqlite:///{work / 'kiln.db'}")
    blobs = BlobStore(work / "blobs")
    registry = Registry(make_sessionmaker(make_db_engine(f"sqlite:///{work / 'kiln.db'}")), blobs)
    vid = register_gen_version(registry, work)
    keys, r = RedisKeys(f"kb{uuid.uuid4().hex[:8]}"), redis.Redis.from_url(REDIS_URL)

    def loader(version, path):  # type: ignore[no-untyped-def]
        return StepBackend(args.step_ms / 1000, context_length=20_000)

    loop = GenerationLoop(r, keys, registry, blobs, loader, GenConfig(max_running=args.requests))
    thread = threading.Thread(target=loop.run, kwargs={"drain_s": 1.0}, daemon=True)
    thread.start()
    try:
        through_loop(r, keys, vid, 1, 2)  # load the version
        base = baseline(args.requests, args.tokens, args.step_ms / 1000)
        looped = through_loop(r, keys, vid, args.requests, args.tokens)
        lat = cancel_latency(r, keys, vid, loop, args.cancels)
    finally:
        loop.stop()
        thread.join(10)
        stale = list(r.scan_iter(match=f"{keys.prefix}:*", count=1000))
        if stale:
            r.delete(*stale)
    total = args.requests * args.tokens
    print(f"{args.requests} streams x {args.tokens} tokens, backend step {args.step_ms} ms")
    print(f"  backend alone : {base:7.3f} s  {total / base:9.0f} tokens/s")
    ratio = looped / base
    print(f"  through loop  : {looped:7.3f} s  {total / looped:9.0f} tokens/s  ({ratio:.2f}x the baseline)")
    print(
        f"  cancel -> sequence freed: p50 {statistics.median(lat) * 1000:.1f} ms, "
        f"max {max(lat) * 1000:.1f} ms over {len(lat)} cancels"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
