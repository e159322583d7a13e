# modelkiln: `make run` starts the whole platform embedded; `make test` runs every gate.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
DATA_DIR ?= .kiln

.PHONY: run test lint typecheck install services clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: that pin is a CPU build already on disk; an open-ended torch
# requirement would download a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/kiln serve --demo --port $(PORT) --data-dir $(DATA_DIR)

services:
	@bash scripts/ensure-services.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) services lint typecheck
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .kiln .pytest_cache .mypy_cache .ruff_cache
