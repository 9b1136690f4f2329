# cxr-triage: `make demo` runs the main job on embedded defaults, `make test` runs the suite.
# Both install what they need first (a .venv with pinned dependencies, and Debian tools).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps test lint typecheck unit up node demo bench clean

install: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.14.1 and torchvision==0.29.1 come through pip like every other pin.
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

test: install lint typecheck
	@scripts/ensure-services.sh
	$(BIN)/pytest

unit: install
	$(BIN)/pytest tests/unit

# The main job on embedded defaults (SQLite, filesystem broker, storage under ./var).
# Set TRIAGE_ALLOWED_AETS to your modalities' AE titles (the node denies everyone by default).
up: install
	$(BIN)/cxr-triage up

node: install
	$(BIN)/cxr-triage node --allow-any-aet

# On a terminal the demo's stack keeps running for the web worklist (Ctrl-C stops it); else it exits.
demo: install
	$(BIN)/cxr-triage demo $$(test -t 0 && echo --serve)

bench: install
	$(BIN)/python bench/ingest.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
