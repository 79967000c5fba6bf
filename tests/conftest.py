"""Shared fixtures: the real bundler (esbuild), both real QuickJS engines (native, WASM), a worker
pool, a loopback stub HTTP server, an aiohttp transport, and a fake clock. And the guard against
quiet skips: with STATEHOST_REQUIRE_ALL_TOOLS set (CI), a run in which any test skipped fails."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from client import StatehostClient
from runtime import Bundler, Engine, Executor, FakeClock, FetchPolicy
from runtime.engines import ENGINE_NAMES, make_engine
from server.fetch import AiohttpTransport
from tests.node.stub import start_stub
from tests.pg import PostgresCluster, find_bin_dir, missing_binaries
from tests.server.api_support import Api, api_client
from tests.support import DATABASE_URLS, REQUIRE_ALL_TOOLS, need_tool, tools_required

# -- no quiet skips in CI ------------------------------------------------------------------------
# need_tool (tests/support.py) fails a test whose tool is missing when the switch is on; this is the
# backstop for any other skip (a bare pytest.skip, an importorskip, a skip marker): under the switch a
# skipped test makes the run fail, unless it is marked ``allowed_skip("why")``. No test is so marked.

_SKIPPED: list[tuple[str, str]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allowed_skip(reason): this test may skip even under STATEHOST_REQUIRE_ALL_TOOLS (say why)",
    )


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and "allowed_skip" not in report.keywords:
        _SKIPPED.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _SKIPPED.append((report.nodeid, _skip_reason(report)))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _SKIPPED and tools_required():
        terminalreporter.section(f"skipped tests fail the run ({REQUIRE_ALL_TOOLS} is set)", red=True)
        for nodeid, reason in _SKIPPED:
            terminalreporter.line(f"skipped without allowed_skip: {nodeid}: {reason.removeprefix('Skipped: ')}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED and tools_required() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def bundler() -> Bundler:
    return Bundler()


@pytest.fixture(scope="session", params=ENGINE_NAMES)
def engine(request: pytest.FixtureRequest, bundler: Bundler) -> Engine:
    """Every engine: a test that takes this fixture runs once per engine (one suite, not copies).
    The WASM runtime (compiled modules, the prelude image) is built once per process."""
    return make_engine(request.param, bundler.runtime_api)


@pytest.fixture(scope="session")
def executor() -> Iterator[Executor]:
    pool = Executor(workers=2)
    yield pool
    pool.close()


@pytest.fixture
async def stub_url() -> AsyncIterator[str]:
    runner, url = await start_stub()
    try:
        yield url
    finally:
        await runner.cleanup()


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    """A transport that may reach loopback (the stub server)."""
    t = AiohttpTransport(FetchPolicy(allow_private=True, timeout_s=10))
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture
async def strict_transport() -> AsyncIterator[AiohttpTransport]:
    """The default policy: no loopback, private or metadata addresses."""
    t = AiohttpTransport(FetchPolicy(timeout_s=5))
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgres"])
def db_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """Where the test's database lives; every test that takes it runs on both backends: SQLite
    (a file here) and PostgreSQL (a fresh database on the test run's server, tests/pg.py)."""
    if request.param == "postgres":
        DATABASE_URLS[tmp_path] = request.getfixturevalue("pg_url")
    try:
        yield tmp_path
    finally:
        DATABASE_URLS.pop(tmp_path, None)


@pytest.fixture
async def api(db_dir: Path, bundler: Bundler) -> AsyncIterator[Api]:
    """The real app on loopback, with the org and admin that first start creates; on each backend
    (db_dir: SQLite, PostgreSQL)."""
    async for client in api_client(db_dir, bundler, DATABASE_URLS.get(db_dir)):
        yield client


@pytest.fixture
async def admin(api: Api) -> AsyncIterator[StatehostClient]:
    """The Python client with the first admin's token, on the ``api`` server."""
    client = StatehostClient(str(api.client.make_url("")), api.admin_token)
    yield client
    await client.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server for the whole run (tests/pg.py): 127.0.0.1, a free port, trust
    authentication, removed at the end. Starting it (initdb included) takes about 1 s (0.5 s on tmpfs).
    Without PostgreSQL binaries (`make postgres` installs Debian's) the test skips, or fails under
    STATEHOST_REQUIRE_ALL_TOOLS (tests.support.need_tool)."""
    if find_bin_dir() is None:
        need_tool("PostgreSQL", missing_binaries())
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty database for this test, as ``postgresql://postgres@127.0.0.1:PORT/NAME`` (NAME is
    ``t_<test name>_<random>``); dropped afterwards, ending any connections still open to it.

    Measured on the dev VM (PostgreSQL 15, ext4): a create and drop take 60-260 ms together (median of
    runs; two psql runs of about 9 ms included), almost all of it CREATE DATABASE creating the copy's
    ~600 files, so it follows the disk: with TMPDIR=/dev/shm (tmpfs) it is about 40 ms. Copying
    template1 (the default, WAL_LOG strategy) is as fast as any: ``TEMPLATE template0`` is no faster and
    ``STRATEGY file_copy`` (two checkpoints) is the slowest, 100-300 ms."""
    name = f"t_{re.sub(r'[^a-z0-9]+', '_', request.node.name.lower())[:40]}_{uuid.uuid4().hex[:8]}"
    url = pg_cluster.create_database(name)
    try:
        yield url
    finally:
        pg_cluster.drop_database(name)
