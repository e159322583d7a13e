"""Does this venv hold exactly the lock? (issue 22) Run by the venv's own Python:
`python scripts/lock_check.py deploy/lock/test.txt`. Reads the lock's `name==version ; marker`
lines, keeps those whose marker holds here, and compares them with every installed distribution
(modelkiln itself and the installer's own pip aside). Prints one line and exits 0 when they are
equal; otherwise prints each difference and exits 1."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

OWN = {"modelkiln", "pip"}


def locked(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        spec, _, marker = line.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate():
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


def main(argv: list[str]) -> int:
    lock = Path(argv[1] if len(argv) > 1 else "deploy/lock/test.txt")
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
