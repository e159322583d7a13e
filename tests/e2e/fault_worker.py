"""`python -m tests.e2e.fault_worker worker ...`: the real `kiln worker`, with its runners
wrapped by tests.faults.FaultRunner as the environment asks:
KILN_TEST_CRASH_ON / KILN_TEST_HANG_ON / KILN_TEST_SLOW_ON (an input value), KILN_TEST_DELAY_MS."""

from __future__ import annotations

import os
import sys

from service.cli import main as cli
from tests.faults import wrapping
from workers.inference import model_cache


def _float(name: str) -> float | None:
    raw = os.environ.get(name)
    return float(raw) if raw else None


def main() -> int:
    model_cache.load_runner = wrapping(  # type: ignore[assignment]
        model_cache.load_runner,
        crash_on=_float("KILN_TEST_CRASH_ON"),
        hang_on=_float("KILN_TEST_HANG_ON"),
        delay_s=float(os.environ.get("KILN_TEST_DELAY_MS", "0")) / 1000,
        slow_on=_float("KILN_TEST_SLOW_ON"),
    )
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
