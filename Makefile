# One place that installs everything a fresh machine needs, and the targets people run.
# `make run` and `make test` are the README's two commands; both set up first.

PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
NPMSTAMP := node_modules/.installed
COMPATSTAMP := tests/compat/node_modules/.installed
BASELINESTAMP := bench/baseline/node_modules/.installed
DASHBOARD := dashboard/dist/index.html
DASHBOARD_SRC := $(wildcard dashboard/src/*.ts dashboard/src/pages/*.ts dashboard/src/*.css dashboard/src/*.html)

.PHONY: setup run test test-fast test-under-load lint typecheck format bench clean browser postgres

setup: $(STAMP) $(NPMSTAMP) $(COMPATSTAMP) $(DASHBOARD)
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

# The benchmarks' Node.js baseline server (bench/baseline): XState and better-sqlite3, pinned.
# better-sqlite3 compiles from source (about a minute) where no prebuilt binary can be downloaded.
$(BASELINESTAMP): bench/baseline/package.json bench/baseline/package-lock.json
	cd bench/baseline && npm ci --no-audit --no-fund --loglevel=error
	touch $(BASELINESTAMP)

# The web dashboard (served at /dashboard), built with the esbuild installed above; rebuilt when a
# source changes. Its output, dashboard/dist/, is git-ignored.
$(DASHBOARD): $(NPMSTAMP) dashboard/build.mjs $(DASHBOARD_SRC)
	node dashboard/build.mjs

# Debian's chromium for the dashboard's end-to-end test (tests/dashboard); never a downloaded
# browser build. Installs it where it is missing and apt-get can (root); otherwise that test skips
# and says why.
browser:
	@bash tests/dashboard/install_chromium.sh || echo "chromium is not installed: the dashboard's browser test will skip"

# Debian's PostgreSQL server binaries for the PostgreSQL backend's tests, which start their own
# throwaway server on a free loopback port (tests/pg.py). Installs them where they are missing and
# apt-get can (root); otherwise those tests skip and say why.
postgres:
	@bash tests/install_postgres.sh || echo "PostgreSQL is not installed: the tests that need a PostgreSQL server will skip"

run: setup
	$(VENV)/bin/statehost serve

# The tests also run the benchmarks' quick modes, which need the Node.js baseline (bench/baseline),
# the dashboard's browser test, which needs Debian's chromium, and the PostgreSQL backend's tests,
# which need Debian's PostgreSQL binaries.
test: setup browser postgres $(BASELINESTAMP)
	$(VPY) -m pytest -q

test-fast: setup
	$(VPY) -m pytest -q -m "not slow"

# The whole suite three times in a row while a CPU hog holds one core; stops at the first failure.
# Limit and timing assertions must hold on a busy machine (CONTRIBUTING.md, "Tests under load").
test-under-load: setup browser postgres $(BASELINESTAMP)
	@python3 -c 'while True: pass' & hog=$$!; trap "kill $$hog" EXIT; \
	for run in 1 2 3; do \
		echo "test-under-load: run $$run of 3 (CPU hog pid $$hog)"; \
		$(VPY) -m pytest -q -x -p no:cacheprovider || { echo "test-under-load: run $$run failed"; exit 1; }; \
	done; echo "test-under-load: 3 runs passed"

lint: setup
	$(VENV)/bin/ruff check runtime server client tests bench
	$(VENV)/bin/ruff format --check runtime server client tests bench

typecheck: setup
	$(VENV)/bin/mypy
	node_modules/.bin/tsc -p dashboard/tsconfig.json

format: setup
	$(VENV)/bin/ruff format runtime server client tests bench
	$(VENV)/bin/ruff check --fix runtime server client tests bench

bench: setup $(BASELINESTAMP) postgres
	$(VPY) -m bench.runtime_steps
	$(VPY) -m bench.engine_throughput
	$(VPY) -m bench.realtime_fanout
	$(VPY) -m bench.wasm_engine
	$(VPY) -m bench.load
	$(VPY) -m bench.nodes --out bench/results/nodes.md

clean:
	rm -rf $(VENV) node_modules dashboard/dist bench/baseline/node_modules .pytest_cache .mypy_cache .ruff_cache
