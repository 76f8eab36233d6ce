# Quick start: `make demo` runs the offline demo, `make test` runs the whole test suite.
# Both create the virtual environment on first use; only Python 3.11+ is needed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Three test processes, a test file each at a time: the tests mostly wait on dev servers,
# workers and subprocesses, so three share two cores well (~10 min serial, ~6 parallel).
PYTEST_PARALLEL ?= -n 3 --dist loadfile

.PHONY: demo test chromium lint typecheck check bench clean plain-install

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/geppetto demo

test: $(STAMP) chromium
	$(BIN)/ruff check geppetto_temporal tests bench
	$(BIN)/ruff format --check geppetto_temporal tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

# The dashboard tests drive a real headless Chromium: Debian's package, never a downloaded browser.
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium for the dashboard tests"; \
		apt-get update -q && apt-get install -y -q chromium || \
		{ echo "could not install chromium: run 'apt-get install chromium' as root"; exit 1; }; }

lint: $(STAMP)
	$(BIN)/ruff check geppetto_temporal tests bench
	$(BIN)/ruff format --check geppetto_temporal tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) .venv-plain .pytest_cache .mypy_cache .ruff_cache test-artifacts

# The library alone, as `pip install geppetto-temporal` gives it: a clean venv, no extras,
# and none of the CLI's, dashboard's or tracing's packages (CI runs this after `make test`).
plain-install:
	rm -rf .venv-plain
	$(PYTHON) -m venv .venv-plain
	.venv-plain/bin/python -m pip install --quiet --upgrade pip
	.venv-plain/bin/python -m pip install --quiet .
	.venv-plain/bin/python -c 'import geppetto_temporal, geppetto_temporal.client, geppetto_temporal.worker; print("import geppetto_temporal: ok")'
	@! .venv-plain/bin/python -m pip list --format=freeze | grep -iE '^(fastapi|uvicorn|starlette|jinja2|typer|rich|opentelemetry-sdk|mcp|ag-ui-protocol)==' \
		|| { echo "the plain install pulled in an extra's package (above)"; exit 1; }
	@echo "plain install: no fastapi, uvicorn, starlette, jinja2, typer, rich, opentelemetry-sdk, mcp or ag-ui-protocol"
	rm -rf .venv-plain
