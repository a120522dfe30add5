# Two commands for a newcomer: `make demo` and `make test`. Each sets everything up first
# (a virtual environment with shelfsync installed from pyproject.toml) and redoes nothing that
# is already done: the venv is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench arm-check clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("shelfsync needs Python 3.11 or newer; this is " + sys.version.split()[0] + " (try make PYTHON=python3.11)") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/shelfsync-demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

# Not part of the tests: every benchmark (the 3G delivery run takes a good while), then
# docs/BENCHMARKS.md from their results. One alone: $(BIN)/python -m bench NAME --help.
bench: $(STAMP)
	$(BIN)/python -m bench all

# Not part of the tests: shelfsync on arm64 under qemu-user (docs/DEVICE.md, "Check it on arm64").
# Needs root, debootstrap, qemu-user-static and binfmt-support; the Debian root is cached in
# build/arm64 (clean removes it).
arm-check: $(STAMP)
	PYTHON=$(BIN)/python devkit/arm-check.sh

clean:
	rm -rf $(VENV) demo-data build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis .schemathesis
