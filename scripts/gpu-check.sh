#!/usr/bin/env bash
# The whole GPU check as one command (issue 15); `make gpu-check [DRY_RUN=1]` runs this.
#   1. installs the carried wheels (.whl/, from scripts/fetch-gpu-wheels.sh) into $SITE: a folder
#      named site-packages, since the model fence (model_store/fence.py) lets model children read
#      sys.path entries by that name, and the children import these packages too
#   2. unpacks the carried Debian packages (.deb/: wrk, LuaJIT) under /tmp/debroot
#   3. runs benchmarks/gpu_check.py: the gpu-marked tests, the GPU benchmarks, $OUT/gpu-check.json
# DRY_RUN=1: the same on the CPU with tiny models and durations (the cp312 wheels are not installed
# over the dev venv's). Output goes to $OUT, else a new temp dir. Ends within 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
PY=${PY:-python3}
DRY_RUN=${DRY_RUN:-0}
[ "$DRY_RUN" = 0 ] || DRY_RUN=1
OUT=${OUT:-$(mktemp -d /tmp/gpu-check-XXXXXX)}
export OUT
mkdir -p "$OUT"
log="$OUT/gpu-check.log"
: >"$log"
say() { echo "$*" | tee -a "$log"; }

SITE=/tmp/site/site-packages
wheels="none carried"
if compgen -G ".whl/*.whl" >/dev/null; then
  if [ "$DRY_RUN" = 1 ]; then
    wheels="skipped (dry run: cp312 wheels are for the GPU machine)"
  elif timeout 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl >>"$log" 2>&1; then
    wheels="installed $(ls .whl/*.whl | wc -l) into $SITE"
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  else
    wheels="failed (see gpu-check.log)"
  fi
fi
say "wheels: $wheels"

debs="none carried"
if compgen -G ".deb/*.deb" >/dev/null; then
  ok=1
  debroot=$(mktemp -d /tmp/debroot-XXXXXX)
  trap 'rm -rf "$debroot"' EXIT
  for f in .deb/*.deb; do dpkg -x "$f" "$debroot" >>"$log" 2>&1 || ok=0; done
  if [ "$ok" = 1 ]; then
    debs="unpacked $(ls .deb/*.deb | wc -l) under $debroot"
    export PATH=$debroot/usr/bin:$PATH
    export LD_LIBRARY_PATH=$debroot/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  else
    debs="failed (see gpu-check.log)"
  fi
fi
say "debs: $debs; wrk: $(command -v wrk || echo missing)"

export GPU_CHECK_SETUP_S=$(($(date +%s) - t0))
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
setup=$(printf '{"wheels": "%s", "debs": "%s", "wrk": "%s", "seconds": %s}' \
  "$wheels" "$debs" "$(command -v wrk || echo missing)" "$GPU_CHECK_SETUP_S")
args=(--out "$OUT" --setup "$setup")
[ "$DRY_RUN" = 1 ] && args+=(--dry-run)
# a short rerun: GPU_CHECK_DEADLINE_S=150 GPU_CHECK_SKIP=bench-minilm bash scripts/gpu-check.sh
[ -n "${GPU_CHECK_DEADLINE_S:-}" ] && args+=(--deadline-s "$GPU_CHECK_DEADLINE_S")
[ -n "${GPU_CHECK_SKIP:-}" ] && args+=(--skip "$GPU_CHECK_SKIP")
# the driver enforces each step's budget and the whole deadline (450 s from t0); this is the last resort
timeout -k 5 $((470 - GPU_CHECK_SETUP_S)) "$PY" benchmarks/gpu_check.py "${args[@]}"
rc=$?
echo "gpu-check: rc $rc, $(($(date +%s) - t0)) s, results in $OUT/gpu-check.json"
exit $rc
