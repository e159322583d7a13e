"""`kiln ...` (service.cli.main) as a real process that reports what it loaded: at exit it writes
to $GATEWAY_PROBE_OUT (JSON) the name of every module in sys.modules and every shared library this
process mapped (/proc/self/maps). With $GATEWAY_PROBE_BLOCK (comma-separated top-level packages),
those packages cannot be imported at all, as on a gateway-only install (pip install modelkiln)."""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType


class Blocked(MetaPathFinder):
    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not installed here)", name=fullname)
        return None


def mapped_libraries(pid: int | str = "self") -> list[str]:
    with open(f"/proc/{pid}/maps") as f:
        return sorted({line.split()[-1] for line in f if ".so" in line.rsplit("/", 1)[-1]})


def _dump(out: str) -> None:
    report = {"pid": os.getpid(), "modules": sorted(sys.modules), "libraries": mapped_libraries()}
    with open(out, "w") as f:
        json.dump(report, f)


def main() -> None:
    blocked = frozenset(n for n in os.environ.get("GATEWAY_PROBE_BLOCK", "").split(",") if n)
    if blocked:
        sys.meta_path.insert(0, Blocked(blocked))
    atexit.register(_dump, os.environ["GATEWAY_PROBE_OUT"])
    # uvicorn stops on SIGTERM, then raises it again with the handler it found: make that an
    # ordinary exit, so that the report is written
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from service.cli.main import main as kiln

    code = kiln(sys.argv[1:])
    sys.exit(code)


if __name__ == "__main__":
    main()
