"""What the fence costs per batch: the same TorchScript MLP run in this process and in a fenced
model process (workers/inference/fenced.py, as the worker runs every model), at batch 1, 8 and 64.
Prints microseconds per call for both and their difference; run on a quiet machine.

    python benchmarks/fence_overhead.py [--calls 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import MLP

from model_store.blobs import sha256_of
from model_store.registry import ResolvedVersion
from model_store.signature import Signature, VersionConfig
from workers.inference.fenced import FencedRunner
from workers.inference.runners import load_local_runner
from workers.inference.runtime import Runner

SIG = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}],
}


def per_call_us(runner: Runner, batch: int, calls: int) -> float:
    x = {"x": np.random.default_rng(0).random((batch, 64), dtype=np.float32)}
    for _ in range(min(200, calls)):
        runner.run(x)
    started = time.perf_counter()
    for _ in range(calls):
        runner.run(x)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    path = Path(tempfile.mkdtemp(prefix="kiln-fence-bench-")) / "mlp.pt"
    torch.jit.save(torch.jit.script(MLP().eval()), str(path))
    data = path.read_bytes()
    version = ResolvedVersion(
        1,
        1,
        "mlp",
        1,
        "torchscript",
        sha256_of([data]),
        Signature.model_validate(SIG),
        VersionConfig(device="cpu"),
    )
    local = load_local_runner(version, data, args.threads)
    fenced = FencedRunner(version, path, threads=args.threads)
    try:
        print(f"{'batch':>5} {'in process us':>14} {'fenced us':>10} {'added us':>9} {'ratio':>6}")
        for batch in (1, 8, 64):
            a = per_call_us(local, batch, args.calls)
            b = per_call_us(fenced, batch, args.calls)
            print(f"{batch:>5} {a:>14.0f} {b:>10.0f} {b - a:>9.0f} {b / a:>6.2f}")
    finally:
        fenced.close()


if __name__ == "__main__":
    main()
