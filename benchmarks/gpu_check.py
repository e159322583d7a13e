"""The whole GPU check as one command (issue 15): `make gpu-check`, or scripts/gpu-check.sh.

Runs each planned step in its own process under its own time budget (a step past its budget is
killed and recorded as `timeout`; the rest still run), all inside one overall deadline, and
writes $OUT/gpu-check.json (device, versions, each step's status, each test's outcome, each figure
with its baseline and ratio), $OUT/gpu-check.log (every step's output) and $OUT/gpu-tests.log.

Statuses: ok, failed (rc N), timeout (budget N s), skipped (no CUDA), skipped (...), not built.
With --dry-run the same steps run on the CPU with tiny models and durations; the CUDA-only steps
are `skipped (no CUDA)` there, and so is the GPU test step (its tests run and skip themselves).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
NO_CUDA = "skipped (no CUDA)"
# seconds per step on the GPU machine; each is also cut to what is left of --deadline-s (450 s from
# the setup's start), so the whole ends within 8 minutes even when a step runs to its budget
BUDGET = {
    "cuda-probe": 30,
    "gpu-tests": 220,
    "bench-minilm": 120,
    "bench-resnet": 90,
    "bench-llama-generation": 150,
}
DRY_BUDGET = {
    "cuda-probe": 20,
    "gpu-tests": 60,
    "bench-minilm": 60,
    "bench-resnet": 45,
    "bench-llama-generation": 120,
}
# (step, script, extra arguments on the GPU, extra arguments always); each script takes
# --device cuda | --dry-run and --out
GEN_GPU = ["--model", "llama1b", "--streams", "1", "64"]
BENCHES: list[tuple[str, str, list[str], list[str]]] = [
    ("bench-minilm", "gpu_minilm.py", ["--duration", "7"], []),
    ("bench-resnet", "gpu_resnet.py", [], []),
    # LitServe's generation (one generate() per request, no batching) would take minutes at 64
    # streams on the GPU: the CPU benchmark compares it (benchmarks/gen_bench.py)
    ("bench-llama-generation", "gen_bench.py", GEN_GPU, ["--no-litserve"]),
]
NOT_BUILT = {
    "bench-litserve": "TODO: LitServe's best configuration on MiniLM in the same run "
    "(its wheels are not carried yet)",
}
PROBE = """
import json, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if info["cuda_available"]:
    p = torch.cuda.get_device_properties(0)
    info |= {"gpu": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count}
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    torch.cuda.synchronize(); (x @ x).sum().item()
try:
    import transformers; info["transformers"] = transformers.__version__
except ImportError:
    pass
print("PROBE " + json.dumps(info))
"""


class Log:
    def __init__(self, path: Path) -> None:
        self.f = path.open("a", encoding="utf-8")

    def write(self, text: str) -> None:
        self.f.write(text if text.endswith("\n") else text + "\n")
        self.f.flush()
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()


def run_step(
    name: str, argv: list[str], budget: float, log: Log, env: dict[str, str], tee: Path | None = None
) -> dict[str, Any]:
    """Run argv in its own process group; kill the group past `budget` seconds."""
    log.write(f"==== {name}: {' '.join(argv)} (budget {budget:.0f} s)")
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )

    def pump() -> None:
        assert proc.stdout is not None
        with tee.open("w", encoding="utf-8") if tee else open(os.devnull, "w") as copy:
            for line in proc.stdout:
                log.write(line)
                copy.write(line)
                copy.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(budget)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the step left running (servers it started)
    reader.join(10)
    seconds = round(time.monotonic() - start, 1)
    if timed_out:
        status = f"timeout (budget {budget:.0f} s)"
    else:
        status = "ok" if proc.returncode == 0 else f"failed (rc {proc.returncode})"
    log.write(f"==== {name}: {status} in {seconds} s")
    return {"name": name, "status": status, "seconds": seconds, "budget_s": round(budget)}


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def test_env(env: dict[str, str], work: Path, log: Log) -> tuple[dict[str, str], Any]:
    """PostgreSQL and Redis where they run (the dev machine); else SQLite and a private redis-server."""
    env = dict(env)
    redis = None
    if "KILN_TEST_PG" not in env and not reachable("127.0.0.1", 5432):
        env["KILN_TEST_PG"] = "sqlite"
    if "KILN_TEST_REDIS" not in env and not reachable("127.0.0.1", 6379):
        sys.path.insert(0, str(ROOT))
        from service.cli.embedded import PrivateRedis

        redis = PrivateRedis(work / "redis")
        redis.start()
        env["KILN_TEST_REDIS"] = redis.url
    db, rd = env.get("KILN_TEST_PG", "PostgreSQL"), env.get("KILN_TEST_REDIS", ":6379")
    log.write(f"tests use database {db}, redis {rd}")
    return env, redis


def gpu_test_files() -> list[str]:
    files = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        if "pytest.mark.gpu" in text:
            files.append(str(path.relative_to(ROOT)))
    return files


def test_outcomes(xml: Path) -> list[dict[str, str]]:
    if not xml.exists():
        return []
    out = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome, message = (
                    {"failure": "failed", "error": "error", "skipped": "skipped"}[tag],
                    el.get("message", ""),
                )
                break
        out.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "message": message[:300],
                "seconds": case.get("time", ""),
            }
        )
    return out


def per_test_timeout(budget_s: float) -> list[str]:
    """One test that hangs must not take the others' time (pytest-timeout, where installed: the
    GPU machine has it); the junit file then names the test that hung."""
    if importlib.util.find_spec("pytest_timeout") is None:
        return []
    return [f"--timeout={max(30, int(budget_s * 0.6))}", "--timeout-method=thread"]


def gpu_tests(
    env: dict[str, str], work: Path, log: Log, out: Path, budget_s: float, cuda: bool
) -> dict[str, Any]:
    """The gpu-marked tests (in the dry run too: collection and fixtures proven; each test skips itself)."""
    tenv, redis = test_env(env, work, log)
    xml = work / "gpu-tests.xml"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-v",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
        "--durations=0",
        *per_test_timeout(budget_s),
        *gpu_test_files(),
    ]
    try:
        step = run_step("gpu-tests", argv, budget_s, log, tenv, tee=out / "gpu-tests.log")
    finally:
        if redis is not None:
            redis.stop()
    step["tests"] = test_outcomes(xml)
    if not cuda and step["status"] == "ok" and all(t["outcome"] == "skipped" for t in step["tests"]):
        step["status"] = NO_CUDA
    return step


def steps(args: argparse.Namespace, out: Path, log: Log, cuda: bool, started: float) -> list[dict[str, Any]]:
    budgets = DRY_BUDGET if args.dry_run else BUDGET
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
    }
    work = Path(tempfile.mkdtemp(prefix="kiln-gpu-check-"))
    results: list[dict[str, Any]] = []

    def budget(name: str) -> float:
        left = args.deadline_s - (time.monotonic() - started) - 5
        return max(1.0, min(budgets[name], left))

    results.append(gpu_tests(env, work, log, out, budget("gpu-tests"), cuda))

    device = ["--device", "cuda"] if cuda else ["--dry-run"]
    for name, script, extra, always in BENCHES:
        if args.skip and name in args.skip:
            log.write(f"==== {name}: skipped (--skip)")
            results.append({"name": name, "status": "skipped (--skip)"})
            continue
        if not cuda and not args.dry_run:
            results.append({"name": name, "status": NO_CUDA})
            continue
        fig = work / f"{name}.json"
        step = run_step(
            name,
            [
                sys.executable,
                str(BENCH / script),
                *device,
                *(extra if cuda else []),
                *always,
                "--out",
                str(fig),
            ],
            budget(name),
            log,
            env,
        )
        if fig.exists():
            step["result"] = json.loads(fig.read_text())
        if not cuda:
            step["status"] = step["status"].replace("ok", "ok (dry run on CPU)", 1)
            step["note"] = "tiny model and durations on the CPU: the figures prove the path, nothing more"
        results.append(step)
    for name, why in NOT_BUILT.items():
        log.write(f"==== {name}: not built ({why})")
        results.append({"name": name, "status": "not built", "note": why})
    shutil.rmtree(work, ignore_errors=True)
    return results


def probe(args: argparse.Namespace, log: Log, started: float) -> tuple[dict[str, Any], dict[str, Any]]:
    budget = (DRY_BUDGET if args.dry_run else BUDGET)["cuda-probe"]
    step = run_step(
        "cuda-probe", [sys.executable, "-c", PROBE], budget, log, {**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    info: dict[str, Any] = {}
    for line in args.log.read_text(encoding="utf-8").splitlines():
        if line.startswith("PROBE "):
            info = json.loads(line.removeprefix("PROBE "))
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info["nvidia_smi"] = smi.stdout.strip()
    if step["status"] == "ok" and not info.get("cuda_available"):
        step["status"] = NO_CUDA
    return step, info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="default: $OUT, else a new temp dir")
    p.add_argument("--deadline-s", type=float, default=450, help="the whole check's budget from its start")
    p.add_argument(
        "--skip", type=lambda v: set(filter(None, v.split(","))), default=set(), help="benchmarks left out"
    )
    p.add_argument("--setup", default="{}", help="JSON: what scripts/gpu-check.sh did before (wheels, debs)")
    args = p.parse_args()
    out = args.out or (
        Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    )
    out.mkdir(parents=True, exist_ok=True)
    args.log = out / "gpu-check.log"
    started = time.monotonic() - float(os.environ.get("GPU_CHECK_SETUP_S", "0"))
    log = Log(args.log)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    log.write(f"gpu-check {'DRY RUN ' if args.dry_run else ''}at {now}, out {out}")
    probe_step, info = probe(args, log, started)
    cuda = bool(info.get("cuda_available"))
    if args.dry_run and cuda:
        log.write("dry run: CUDA is present but not used")
        cuda = False
    report: dict[str, Any] = {
        "dry_run": args.dry_run,
        "command": " ".join(sys.argv),
        "python": sys.version.split()[0],
        "device": info,
        "setup": json.loads(args.setup),
        "steps": [probe_step, *steps(args, out, log, cuda, started)],
    }
    report["seconds"] = round(time.monotonic() - started, 1)
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    log.write(
        f"gpu-check done in {report['seconds']} s: "
        + ", ".join(f"{s['name']} {s['status']}" for s in report["steps"])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
