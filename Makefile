# Paylink: `make run` starts everything, `make test` checks everything.
# Both create .venv on first use and reinstall only when a requirements file changed.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.paylink-requirements
# The first of these that is Python 3.11 or newer makes the venv.
PYTHON ?= $(shell for p in python3 python3.11 python3.12 python3.13; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; \
	done)
PORT ?= 5000

.DEFAULT_GOAL := help
.PHONY: help install run test lint format bench clean

help:
	@echo "make run     start web, worker and scheduler on http://localhost:$(PORT) (PORT=... to change)"
	@echo "make test    lint, format check and the whole test suite"
	@echo "make lint    ruff check, ruff format --check (and import-linter when configured)"
	@echo "make format  ruff format and safe ruff fixes"
	@echo "make bench   run every tests/bench/bench_*.py"
	@echo "make clean   remove caches and the install stamp (keeps .venv and instance/)"

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "Paylink needs Python 3.11 or newer (python3, python3.11 or python3.12)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	@echo "Installing Paylink's pinned dependencies into $(VENV) (a minute on a new .venv)"
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	@touch $@

install: $(STAMP)

run: $(STAMP)
	PORT=$(PORT) $(BIN)/python -m app.devrun

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@if grep -qs '^\[tool.importlinter\]' pyproject.toml || test -f .importlinter; then \
		echo "$(BIN)/lint-imports"; $(BIN)/lint-imports; fi

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	@found=0; for script in tests/bench/bench_*.py; do \
		test -e "$$script" || continue; found=1; \
		echo "== $$script"; PYTHONPATH="$(CURDIR)" $(BIN)/python "$$script" || exit 1; \
	done; test $$found = 1 || echo "no benchmarks in tests/bench/"

clean:
	rm -rf .pytest_cache .ruff_cache tests/bench/results $(STAMP)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
