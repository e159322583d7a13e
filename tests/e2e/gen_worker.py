"""`python -m tests.e2e.gen_worker worker ...`: the real `kiln worker`, its generation loop
given the deterministic test backend (tests/generation_backend.py; pace KILN_TEST_GEN_STEP_MS)."""

from __future__ import annotations

import sys

from service.cli import main as cli
from tests import generation_backend
from workers.generation import loader


def main() -> int:
    loader.OVERRIDE = generation_backend.load
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
