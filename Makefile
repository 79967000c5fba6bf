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

.PHONY: setup run test test-fast test-under-load lint typecheck format bench clean browser postgres fuzz

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
	@bash tests/dashboard/install_chromium.sh || echo "chromium is not installed: the dashboard's browser test will skip (fail under STATEHOST_REQUIRE_ALL_TOOLS)"

# Debian's PostgreSQL server binaries for the PostgreSQL backend's tests, which start their own
# throwaway server on a free loopback port (tests/pg.py). Installs them where they are missing and
# apt-get can (root); otherwise those tests skip and say why.
postgres:
	@bash tests/install_postgres.sh || echo "PostgreSQL is not installed: the tests that need a PostgreSQL server will skip (fail under STATEHOST_REQUIRE_ALL_TOOLS)"

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

# API fuzzing (tests/fuzz, docs/durability.md "API fuzzing"): the suite runs 25 fixed cases per
# operation and identity; this runs FUZZ_MAX_EXAMPLES new random ones each time (about 20 minutes
# at 500 on 2 busy cores) and writes the status counts and a sample request per error to FUZZ_REPORT.
FUZZ_MAX_EXAMPLES ?= 500
FUZZ_REPORT ?= fuzz-report.json
fuzz: setup
	FUZZ_MAX_EXAMPLES=$(FUZZ_MAX_EXAMPLES) FUZZ_RANDOM=1 FUZZ_REPORT=$(abspath $(FUZZ_REPORT)) \
		$(VPY) -m pytest -q -s -p no:cacheprovider tests/fuzz

clean:
	rm -rf $(VENV) node_modules dashboard/dist bench/baseline/node_modules .pytest_cache .mypy_cache .ruff_cache

# A wheel for this platform that runs without node (issue 19): esbuild's native binary, XState 4 and
# 5, @statebacked/machine (as package-lock.json pins them), js_shims, the built dashboard and the
# prebuilt WASM guest, in dist/statehost-<version>-py3-none-<platform>.whl (tools/build_wheel.py).
.PHONY: wheel
wheel: $(STAMP) $(NPMSTAMP) $(DASHBOARD)
	$(VPY) tools/build_wheel.py --out dist

# docs/configuration.md is generated from the settings (server/config.py, runtime/limits.py);
# tests/test_docs.py fails when it is stale.
.PHONY: docs
docs: setup
	$(VPY) -m server.settings_doc --write

# Random event programs against a real `statehost serve` that is SIGKILLed at random points, checked
# against XState in node (tests/oracle): `make soak MINUTES=30` draws fresh programs until the time
# is up, printing each batch's seed and the totals (programs, kills, events and timers checked).
MINUTES ?= 10
.PHONY: soak
soak: setup
	STATEHOST_SOAK_MINUTES=$(MINUTES) $(VPY) -m pytest -q -s tests/oracle/test_random_programs.py
