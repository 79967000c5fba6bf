# One place that installs everything a fresh machine needs, and the targets people run.
# `make run` and `make test` are the README's two commands; both set up first.

PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
NPMSTAMP := node_modules/.installed
COMPATSTAMP := tests/compat/node_modules/.installed

.PHONY: setup run test test-fast lint typecheck format bench clean

setup: $(STAMP) $(NPMSTAMP) $(COMPATSTAMP)
	@$(VPY) -m runtime.wasm_build --quiet

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The WASM engine's guest (QuickJS-NG compiled by zig) is a build artifact cached outside the tree,
# keyed by a hash of its inputs; `runtime.wasm_build` is a no-op when it is there (about 40 s if not).

# package-lock.json pins every JS package; `npm ci` installs exactly that.
$(NPMSTAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NPMSTAMP)

# The official State Backed packages (smply, @statebacked/client, @statebacked/token), pinned, for
# the interoperability tests in tests/compat.
$(COMPATSTAMP): tests/compat/package.json tests/compat/package-lock.json
	cd tests/compat && npm ci --no-audit --no-fund --loglevel=error
	touch $(COMPATSTAMP)

run: setup
	$(VENV)/bin/statehost serve

test: setup
	$(VPY) -m pytest -q

test-fast: setup
	$(VPY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check runtime server client tests bench
	$(VENV)/bin/ruff format --check runtime server client tests bench

typecheck: setup
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format runtime server client tests bench
	$(VENV)/bin/ruff check --fix runtime server client tests bench

bench: setup
	$(VPY) -m bench.runtime_steps
	$(VPY) -m bench.engine_throughput
	$(VPY) -m bench.realtime_fanout
	$(VPY) -m bench.wasm_engine

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
