"""Serving benchmark: modelkiln vs LitServe on the same model, same load, same run.

Starts the production configuration of modelkiln (auth, admission, durable Redis Streams
queue, metrics: nothing skipped) with a private redis-server and SQLite, drives closed-loop
load with wrk (Debian's package) and a Lua script, then does the same against LitServe
(PyPI `litserve`, in its own venv) serving the same TorchScript file. Prints requests/s,
p50/p99, mean batch size and ratios against (a) the bare batched forward measured in this
run and (b) LitServe; the ceiling of wrk against a no-op endpoint is measured first.

    python benchmarks/serve_bench.py --model mlp --duration 15
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
BENCH = ROOT / "benchmarks"
LITSERVE_VENV = ROOT / ".venv-litserve"
KEY = "kiln_bench_" + "k" * 40


class MLP(torch.nn.Module):
    def __init__(self, d_in: int = 64, hidden: int = 256, d_out: int = 10) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(d_in, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, d_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class Result:
    name: str
    requests_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    mean_batch: float | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_model(path: Path) -> tuple[int, int]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(MLP().eval()), str(path))
    return 64, 10


def bare_forward(path: Path, d_in: int, threads: int) -> dict[int, float]:
    """Items/s of the model called directly, per batch size (the ceiling for items/s)."""
    torch.set_num_threads(threads)
    model = torch.jit.load(str(path)).eval()
    out: dict[int, float] = {}
    for bs in (1, 8, 64):
        x = torch.randn(bs, d_in)
        with torch.inference_mode():
            for _ in range(50):
                model(x)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < 1.0:
                model(x)
                n += 1
        out[bs] = n * bs / (time.perf_counter() - start)
    return out


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def wrk(
    url: str, body: Path, key: str, connections: int, duration: int, threads: int, method: str = "POST"
) -> dict[str, int]:
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_KEY": key, "BENCH_METHOD": method}
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{duration}s",
            "--timeout",
            "10s",
            "-s",
            str(BENCH / "wrk_post.lua"),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("BENCH "))
    return dict(json.loads(line.removeprefix("BENCH ")))


def to_result(name: str, raw: dict[str, int], mean_batch: float | None = None) -> Result:
    errors = raw["connect_errors"] + raw["read_errors"] + raw["timeouts"] + raw["non2xx"]
    return Result(
        name,
        raw["requests"] / (raw["duration_us"] / 1e6),
        raw["p50_us"] / 1000,
        raw["p99_us"] / 1000,
        errors,
        mean_batch,
    )


class Kiln:
    """modelkiln in its production shape: gateway process(es), worker(s), Redis, database."""

    def __init__(self, work: Path, gateways: int, workers: int, threads: int) -> None:
        from service.cli.embedded import PrivateRedis

        self.redis = PrivateRedis(work / "kiln")
        self.redis.start()
        self.env = {
            **os.environ,
            "KILN_DATA_DIR": str(work / "kiln"),
            "KILN_REDIS_URL": self.redis.url,
            "KILN_BOOTSTRAP_ADMIN_KEY": KEY,
            "KILN_LOG_LEVEL": "WARNING",
        }
        subprocess.run(
            [sys.executable, "-m", "service.cli.main", "db", "upgrade"],
            env=self.env,
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs = [self._spawn("gateway", "--port", str(self.port), "--workers", str(gateways))]
        wait_http(f"{self.url}/v2/health/live", self.procs[0])  # ready needs a worker, started next
        self.metrics_ports = []
        for _ in range(workers):
            port = free_port()
            self.metrics_ports.append(port)
            self.procs.append(self._spawn("worker", "--metrics-port", str(port), "--threads", str(threads)))
            wait_http(f"http://127.0.0.1:{port}/metrics", self.procs[-1])
        wait_http(f"{self.url}/v2/health/ready", self.procs[0])

    def _spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli.main", *argv],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def register(self, model: Path, config: dict[str, object]) -> None:
        sig = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}],
        }
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            c.post("/v1/models", json={"name": "bench"}).raise_for_status()
            c.post(
                "/v1/models/bench/versions",
                files={"file": ("m.pt", model.read_bytes())},
                data={"format": "torchscript", "signature": json.dumps(sig), "config": json.dumps(config)},
            ).raise_for_status()

    def batch_counters(self) -> tuple[float, float]:
        items = batches = 0.0
        for port in self.metrics_ports:
            for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
                if line.startswith("kiln_inference_count_total{"):
                    items += float(line.rsplit(" ", 1)[1])
                elif line.startswith("kiln_inference_exec_count_total{"):
                    batches += float(line.rsplit(" ", 1)[1])
        return items, batches

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.redis.stop()


def run_kiln(args: argparse.Namespace, work: Path, model: Path, body: Path, gateways: int) -> list[Result]:
    kiln = Kiln(work / f"g{gateways}", gateways, args.workers, args.threads)
    try:
        kiln.register(model, {"max_batch_size": 64, "max_queue_delay_ms": args.delay_ms})
        results = []
        if gateways == 1:  # the load generator's ceiling against a no-op endpoint of the same server
            raw = wrk(
                f"{kiln.url}/v2/health/live", body, KEY, max(args.connections), 5, args.wrk_threads, "GET"
            )
            results.append(to_result("wrk ceiling (no-op GET /v2/health/live)", raw))
        infer = f"{kiln.url}/v2/models/bench/infer"
        wrk(infer, body, KEY, max(args.connections), 3, args.wrk_threads)  # warm up
        for conns in args.connections:
            before = kiln.batch_counters()
            raw = wrk(infer, body, KEY, conns, args.duration, args.wrk_threads)
            after = kiln.batch_counters()
            batches = after[1] - before[1]
            mean = (after[0] - before[0]) / batches if batches else None
            name = f"modelkiln ({gateways} gateway proc, {args.workers} worker) c={conns}"
            results.append(to_result(name, raw, mean))
        return results
    finally:
        kiln.stop()


def run_litserve(
    args: argparse.Namespace, model: Path, body: Path, api_servers: int, fast_queue: bool
) -> list[Result]:
    port = free_port()
    argv = [
        str(LITSERVE_VENV / "bin" / "python"),
        str(BENCH / "litserve_server.py"),
        "--model",
        str(model),
        "--port",
        str(port),
        "--api-servers",
        str(api_servers),
        "--workers",
        str(args.workers),
        "--batch-timeout",
        str(args.delay_ms / 1000),
        "--threads",
        str(args.threads),
    ]
    if fast_queue:
        argv.append("--fast-queue")
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        url = f"http://127.0.0.1:{port}/predict"
        wrk(url, body, "", max(args.connections), 3, args.wrk_threads)
        label = f"LitServe ({api_servers} API server{'s' if api_servers > 1 else ''}, batch 64"
        label += ", fast queue)" if fast_queue else ")"
        return [
            to_result(f"{label} c={conns}", wrk(url, body, "", conns, args.duration, args.wrk_threads))
            for conns in args.connections
        ]
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def ensure_litserve() -> None:
    if (LITSERVE_VENV / "bin" / "python").exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(LITSERVE_VENV)], check=True)
    pip = str(LITSERVE_VENV / "bin" / "pip")
    lock = str(ROOT / "deploy" / "lock" / "test.txt")  # the locked versions, LitServe's own included
    subprocess.run([pip, "install", "-q", "-c", lock, "torch", "litserve"], check=True)


def report(results: list[Result], bare: dict[int, float]) -> str:
    lines = [f"{'configuration':64} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'batch':>6}"]
    for r in results:
        mb = f"{r.mean_batch:.1f}" if r.mean_batch else "-"
        lines.append(f"{r.name:64} {r.requests_s:9.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.errors:7d} {mb:>6}")
    lines.append("bare forward items/s: " + ", ".join(f"batch {b}: {v:,.0f}" for b, v in bare.items()))
    kiln = [r for r in results if r.name.startswith("modelkiln")]
    lit = [r for r in results if r.name.startswith("LitServe")]
    if kiln and lit:
        best_k = max(kiln, key=lambda r: r.requests_s)
        best_l = max(lit, key=lambda r: r.requests_s)
        lines.append(
            f"best modelkiln / best LitServe requests/s: {best_k.requests_s / best_l.requests_s:.2f}x "
            f"(p99 {best_k.p99_ms:.1f} ms vs {best_l.p99_ms:.1f} ms)"
        )
        # the target: modelkiln's requests/s at a p99 no worse than LitServe's at its best throughput
        within = [r for r in kiln if r.p99_ms <= best_l.p99_ms]
        if within:
            k = max(within, key=lambda r: r.requests_s)
            lines.append(
                f"at equal or lower p99 ({k.p99_ms:.1f} <= {best_l.p99_ms:.1f} ms): modelkiln "
                f"{k.requests_s:.0f} req/s = {k.requests_s / best_l.requests_s:.2f}x LitServe's best"
            )
        else:
            lines.append("no modelkiln point had a p99 at or under LitServe's")
        lines.append(
            f"best modelkiln items/s / bare forward best items/s: "
            f"{best_k.requests_s / max(bare.values()):.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp", choices=["mlp"])
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--connections", type=int, nargs="+", default=[16, 32, 64], help="closed-loop sweep")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per model worker")
    p.add_argument("--gateways", type=int, nargs="+", default=[1, 2])
    p.add_argument("--delay-ms", type=float, default=2.0)
    p.add_argument("--skip-litserve", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    model = work / "mlp.pt"
    d_in, _ = build_model(model)
    body = work / "body.json"
    body.write_text(
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1, d_in],
                        "datatype": "FP32",
                        "data": [0.01 * i for i in range(d_in)],
                    }
                ]
            }
        )
    )
    bare = bare_forward(model, d_in, args.threads)
    results: list[Result] = []
    for g in args.gateways:
        results += run_kiln(args, work, model, body, g)
    if not args.skip_litserve:
        ensure_litserve()
        for api_servers, fast in ((1, False), (2, True)):
            results += run_litserve(args, model, body, api_servers, fast)
    text = report(results, bare)
    print(text)
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "results": [asdict(r) for r in results],
                    "bare": bare,
                    "args": {k: str(v) for k, v in vars(args).items()},
                },
                indent=2,
            )
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
