"""`make gpu-check DRY_RUN=1` (scripts/gpu-check.sh) runs the whole GPU check on the CPU: the
script exits 0, writes its JSON and log, records every planned step with a status, records the
CUDA steps as skipped for want of CUDA, and the benchmarks' figures with their baselines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# the dry run gives each step a wall-clock budget: it runs alone (`make test`'s serial part)
pytestmark = pytest.mark.serial
ROOT = Path(__file__).resolve().parents[2]
PLANNED = [
    "cuda-probe",
    "gpu-tests",
    "bench-minilm",
    "bench-resnet",
    "bench-llama-generation",
    "bench-litserve",
]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, float]:
    out = tmp_path_factory.mktemp("gpu-check-out")
    env = {**os.environ, "OUT": str(out), "DRY_RUN": "1", "PY": sys.executable}
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh")], env=env, capture_output=True, text=True, timeout=480
    )
    return proc, out, time.monotonic() - start


def test_dry_run_exits_zero_and_writes_json_and_logs(dry_run) -> None:  # type: ignore[no-untyped-def]
    proc, out, _seconds = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("gpu-check.json", "gpu-check.log", "gpu-tests.log"):
        assert (out / name).stat().st_size > 0, name
    assert "==== gpu-tests" in (out / "gpu-check.log").read_text()


def test_every_planned_step_has_a_status_and_cuda_steps_are_skipped(dry_run) -> None:  # type: ignore[no-untyped-def]
    _proc, out, _ = dry_run
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["dry_run"] is True
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == PLANNED
    assert all(s["status"] for s in steps.values())
    assert steps["cuda-probe"]["status"] == "skipped (no CUDA)"
    assert steps["gpu-tests"]["status"] == "skipped (no CUDA)"
    tests = steps["gpu-tests"]["tests"]
    assert tests and all(t["outcome"] == "skipped" for t in tests)
    assert any("load_unload_50" in t["test"] for t in tests)
    assert steps["bench-litserve"]["status"] == "not built"
    assert steps["bench-llama-generation"]["status"] == "ok (dry run on CPU)", steps["bench-llama-generation"]
    assert report["device"]["cuda_available"] is False and report["device"]["torch"]


def test_benchmarks_record_figures_against_same_run_baselines(dry_run) -> None:  # type: ignore[no-untyped-def]
    _proc, out, _ = dry_run
    steps = {s["name"]: s for s in json.loads((out / "gpu-check.json").read_text())["steps"]}
    for name in ("bench-minilm", "bench-resnet"):
        step = steps[name]
        assert step["status"] == "ok (dry run on CPU)", step
        figures = step["result"]["figures"]
        with_baseline = [f for f in figures if "baseline" in f]
        assert with_baseline, figures
        for f in with_baseline:
            assert f["value"] > 0 and f["baseline"] > 0
            assert f["ratio"] == pytest.approx(f["value"] / f["baseline"])
    gen = steps["bench-llama-generation"]["result"]  # modelkiln's streams against in-process CB
    for n, baseline in gen["in_process"]["streams"].items():
        assert baseline["tokens_s"] > 0 and gen["modelkiln"][n]["tokens_s"] > 0
        assert gen["modelkiln"][n]["ttft_p50_ms"] > 0


def test_a_step_past_its_budget_is_killed_and_recorded(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    log = gpu_check.Log(tmp_path / "log")
    start = time.monotonic()
    step = gpu_check.run_step(
        "sleeper", ["bash", "-c", "echo started; sleep 60 & wait"], 1.5, log, dict(os.environ)
    )
    assert step["status"].startswith("timeout (budget"), step
    assert time.monotonic() - start < 15
    ok = gpu_check.run_step("quick", ["bash", "-c", "echo hi; exit 3"], 10, log, dict(os.environ))
    assert ok["status"] == "failed (rc 3)"
    assert "started" in (tmp_path / "log").read_text()
