"""The oracle's shared fixture: one ``statehost serve`` (on the test clock, tests/oracle/serve.py)
with every fixture machine of the alphabet deployed, and each fixture bundled for node."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from runtime import Bundler, Upload
from tests.oracle.harness import ALPHABETS, FIXTURES, STATS, OracleEnv, Server, require_node

ENGINE = os.environ.get("STATEHOST_ORACLE_ENGINE", "quickjs-wasm")
BACKEND = os.environ.get("STATEHOST_ORACLE_BACKEND", "sqlite")
"""``postgres``: the server runs on a throwaway PostgreSQL database (the pg_cluster fixture) instead."""


@pytest.fixture(scope="module")
def oracle_env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[OracleEnv]:
    node = require_node()
    tmp = tmp_path_factory.mktemp("oracle")
    data = tmp / "data"
    data.mkdir()
    database_url = None
    if BACKEND == "postgres":
        database_url = request.getfixturevalue("pg_cluster").create_database(f"oracle_{uuid.uuid4().hex[:8]}")
    elif BACKEND != "sqlite":
        raise ValueError(f"STATEHOST_ORACLE_BACKEND must be sqlite or postgres, not {BACKEND!r}")
    server = Server(data, ENGINE, database_url)
    bundler = Bundler()
    bundles: dict[tuple[str, int], Path] = {}
    for fixture in sorted(ALPHABETS):
        for major in (4, 5):
            source = (FIXTURES / fixture / f"v{major}" / "machine.ts").read_bytes()
            path = tmp / f"{fixture}-v{major}.js"
            path.write_text(bundler.bundle(Upload("machine.ts", source, xstate_major=major)).code)
            bundles[(fixture, major)] = path

    async def boot() -> None:
        async with aiohttp.ClientSession() as session:
            await server.start(session)
            for fixture, major in bundles:
                await server.deploy(session, fixture, major)

    try:
        asyncio.run(boot())
        yield OracleEnv(server, node, bundles)
    finally:
        server.stop()
        _report()


def _report() -> None:
    totals = STATS.as_dict()
    print("\noracle totals: " + json.dumps(totals))
    target = os.environ.get("STATEHOST_ORACLE_STATS")
    if target:
        Path(target).write_text(json.dumps(totals, indent=2) + "\n")
