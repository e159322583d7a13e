"""The gateway process's resident memory, idle and after a fixed load, and whether it maps torch,
transformers or onnxruntime. Same load each run: the MLP of serve_bench.py, one gateway process,
one worker, wrk closed loop (16 connections, 10 s) against /v2/models/bench/infer. The gateway's
own process, and with the processes it started (a fork server for local model checks, which
preloads torch; none with KILN_CHECKS=worker, as on a gateway-only install).

    python benchmarks/gateway_rss.py [--duration 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.serve_bench import KEY, Kiln, build_model, to_result, wrk

HEAVY = ("libtorch", "transformers", "onnxruntime")


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def tree_rss_mib(pid: int) -> float:
    """The gateway with every process it started (a fork server for local model checks)."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return round(sum(p.memory_info().rss for p in procs) / 2**20, 1)


def heavy_maps(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({name for name in HEAVY if name in maps})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--connections", type=int, default=16)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "mlp.pt"
        d_in, _ = build_model(model)
        body = work / "body.json"
        tensor = {"name": "x", "datatype": "FP32", "shape": [1, d_in], "data": [0.5] * d_in}
        body.write_text(json.dumps({"inputs": [tensor]}))
        kiln = Kiln(work, 1, 1, 1)
        try:
            gateway = kiln.procs[0].pid
            idle = status(gateway)
            kiln.register(model, {"max_batch_size": 64, "max_queue_delay_ms": 2})
            raw = wrk(f"{kiln.url}/v2/models/bench/infer", body, KEY, args.connections, args.duration, 2)
            loaded = status(gateway)
            tree = tree_rss_mib(gateway)
            result = to_result("load", raw)
            report = {
                "idle_rss_mib": round(idle["VmRSS"] / 1024, 1),
                "after_load_rss_mib": round(loaded["VmRSS"] / 1024, 1),
                "peak_rss_mib": round(loaded["VmHWM"] / 1024, 1),
                "threads": loaded["Threads"],
                "with_children_rss_mib": tree,
                "maps": heavy_maps(gateway),
                "requests_s": round(result.requests_s),
                "errors": result.errors,
            }
        finally:
            kiln.stop()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
