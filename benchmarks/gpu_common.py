"""Shared pieces of the GPU benchmarks (benchmarks/gpu_minilm.py, benchmarks/gpu_resnet.py).

The serving stack is serve_bench.py's `Kiln` (gateway processes, a worker, a private Redis, SQLite,
production configuration); the load comes from wrk where it is on the PATH, else from a closed loop
of httpx clients in threads (named in each figure's `loader`). Bare-forward baselines are timed in
the same run, on the same device, with the device synchronised around each timed call.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import serve_bench  # noqa: E402  (benchmarks/ is not a package)

KEY = serve_bench.KEY
Kiln = serve_bench.Kiln


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def latency_p50_ms(fn: Callable[[], object], device: str, seconds: float, warmup: int = 5) -> float:
    """Median wall time of one call (device synchronised after each), over `seconds`."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def throughput(fn: Callable[[], object], items: int, device: str, seconds: float, warmup: int = 3) -> float:
    """Items/s of back-to-back calls (the device synchronised at the start and the end)."""
    for _ in range(warmup):
        fn()
    sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 2:
        fn()
        n += 1
        if n % 8 == 0:
            sync(device)
    sync(device)
    return n * items / (time.perf_counter() - start)


def register(kiln: Any, name: str, filename: str, data: bytes, fmt: str, **form: object) -> None:
    fields = {"format": fmt, **{k: json.dumps(v) for k, v in form.items()}}
    with httpx.Client(base_url=kiln.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as c:
        c.post("/v1/models", json={"name": name}).raise_for_status()
        r = c.post(f"/v1/models/{name}/versions", files={"file": (filename, data)}, data=fields)
        if r.status_code != 201:
            raise RuntimeError(f"upload of {name} refused: {r.status_code} {r.text[:500]}")


def wait_served(url: str, content: bytes, headers: dict[str, str], timeout_s: float = 240) -> None:
    """Send one request until it succeeds (the worker loads the model on the first)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    with httpx.Client(timeout=120) as c:
        while time.monotonic() < deadline:
            r = c.post(url, content=content, headers=headers)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:300]}"
            time.sleep(0.5)
    raise RuntimeError(f"model never answered: {last}")


def sequential_p50_ms(url: str, content: bytes, headers: dict[str, str], seconds: float) -> dict[str, float]:
    """One request in flight: latencies of back-to-back requests from one client."""
    times: list[float] = []
    with httpx.Client(timeout=60) as c:
        for _ in range(5):
            c.post(url, content=content, headers=headers).raise_for_status()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            start = time.perf_counter()
            c.post(url, content=content, headers=headers).raise_for_status()
            times.append(time.perf_counter() - start)
    times.sort()
    return {
        "p50_ms": statistics.median(times) * 1000,
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
        "requests": len(times),
    }


def closed_loop(
    url: str, content: bytes, headers: dict[str, str], clients: int, seconds: float
) -> dict[str, float]:
    """`clients` threads, each with one request in flight, for `seconds`: requests/s, p50, p99."""
    lats: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def run() -> None:
        mine: list[float] = []
        bad = 0
        with httpx.Client(timeout=60) as c:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    ok = c.post(url, content=content, headers=headers).status_code == 200
                except httpx.HTTPError:
                    ok = False
                mine.append(time.perf_counter() - start)
                bad += not ok
        with lock:
            lats.extend(mine)
            errors[0] += bad

    start = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lats.sort()
    return {
        "requests_s": len(lats) / elapsed,
        "p50_ms": statistics.median(lats) * 1000 if lats else 0.0,
        "p99_ms": lats[min(len(lats) - 1, int(len(lats) * 0.99))] * 1000 if lats else 0.0,
        "errors": errors[0],
        "requests": len(lats),
        "loader": f"httpx closed loop, {clients} threads",
    }


def load(url: str, body: Path, connections: int, seconds: int, wrk_threads: int) -> dict[str, float]:
    """JSON POSTs of `body` under wrk (closed loop, `connections`), else under httpx threads."""
    if shutil.which("wrk") is None:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        return closed_loop(url, body.read_bytes(), headers, min(connections, 16), seconds)
    raw = serve_bench.wrk(url, body, KEY, connections, seconds, wrk_threads)
    r = serve_bench.to_result(f"c={connections}", raw)
    return {
        "requests_s": r.requests_s,
        "p50_ms": r.p50_ms,
        "p99_ms": r.p99_ms,
        "errors": r.errors,
        "requests": raw["requests"],
        "loader": f"wrk -t{wrk_threads} -c{connections} -d{seconds}s",
    }


def figure(
    name: str, value: float, unit: str, baseline: float | None = None, **extra: object
) -> dict[str, Any]:
    """One measured figure; `ratio` is value / baseline (both measured in this run)."""
    out: dict[str, Any] = {"name": name, "value": value, "unit": unit}
    if baseline is not None:
        out["baseline"] = baseline
        out["ratio"] = value / baseline if baseline else None
    return out | extra


def device_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
