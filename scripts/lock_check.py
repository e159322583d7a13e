"""Does this venv hold exactly the lock? (issue 22) Run by the venv's own Python:
`python scripts/lock_check.py deploy/lock/test.txt`. Reads the lock's `name==version ; marker`
lines, keeps those whose marker holds here, and compares them with every installed distribution
(modelkiln itself and the installer's own pip aside). Prints one line and exits 0 when they are
equal; otherwise prints each difference and exits 1.

`python scripts/lock_check.py LOCK --pins PYVER NAME...` prints the lock's `name==version` for
each NAME on Linux x86_64 under CPython PYVER (e.g. 3.12: the GPU machine's wheels,
scripts/fetch-gpu-wheels.sh), and exits 1 naming any NAME the lock does not hold."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

OWN = {"modelkiln", "pip"}


def locked(path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The lock's pins whose markers hold in `env` (default: this interpreter)."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        spec, _, marker = line.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate(env):  # type: ignore[arg-type]
            continue
        name, _, version = spec.strip().partition("==")
        pins[canonicalize_name(name)] = version.strip()
    return pins


def installed() -> dict[str, str]:
    return {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in metadata.distributions()
        if canonicalize_name(d.metadata["Name"]) not in OWN
    }


def linux_cpython(version: str) -> dict[str, str]:
    return {
        "python_version": version,
        "python_full_version": f"{version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
    }


def pins(lock: Path, version: str, names: list[str]) -> int:
    have = locked(lock, linux_cpython(version))
    missing = [n for n in names if canonicalize_name(n) not in have]
    if missing:
        print(f"not in {lock}: {' '.join(missing)}", file=sys.stderr)
        return 1
    print(" ".join(f"{n}=={have[canonicalize_name(n)]}" for n in names))
    return 0


def main(argv: list[str]) -> int:
    lock = Path(argv[1] if len(argv) > 1 else "deploy/lock/test.txt")
    if len(argv) > 3 and argv[2] == "--pins":
        return pins(lock, argv[3], argv[4:])
    want, have = locked(lock), installed()
    diffs = [
        f"  {name}: lock {want.get(name, '-')}, venv {have.get(name, '-')}"
        for name in sorted(want.keys() | have.keys())
        if want.get(name) != have.get(name)
    ]
    if diffs:
        print(f"the venv differs from {lock} (run `make install`):", *diffs, sep="\n")
        return 1
    print(f"venv equals {lock}: {len(want)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
