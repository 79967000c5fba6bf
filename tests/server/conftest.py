"""A DurableEngine on a real SQLite file in tmp_path, with a fake clock, and helpers to deploy
machines into it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from runtime import FakeClock, FetchPolicy, Limits, Upload
from server.app import create_app
from server.config import Settings
from server.engine import DurableEngine
from tests.server.api_support import Api, api_client
from tests.support import ALLOW_ALL, DATABASE_URLS, HEADER, eventually

ORG_NAME = "test-org"

__all__ = ["Deployment", "eventually", "settings_for"]  # eventually: tests.support's, kept importable from here


class Deployment:
    def __init__(self, engine: DurableEngine, org_id: str) -> None:
        self.engine = engine
        self.org_id = org_id

    async def machine(self, slug: str, body: str, major: int = 4, *, header: bool = True) -> str:
        """Create machine ``slug`` with one version from ``body``; return the version id."""
        source = (HEADER[major] + ALLOW_ALL + body) if header else body
        await self.engine.store.create_machine(self.org_id, slug, [], self.engine.clock.now_ms())
        return await self.engine.instances.create_version(
            self.org_id, slug, Upload("machine.ts", source.encode(), xstate_major=major)
        )


def settings_for(path: Path, **overrides) -> Settings:
    """Settings for an engine on the test's database: the SQLite file in ``path``, or the
    PostgreSQL database that the db_dir fixture created for it."""
    base = {
        "database": path / "statehost.db",
        "database_url": DATABASE_URLS.get(path),
        "fetch": FetchPolicy(allow_private=True, timeout_s=10),
        "shutdown_grace_s": 2.0,
        "workers": 2,
        "limits": Limits(),
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(
    params=[("quickjs-wasm", "actors"), ("quickjs-native", "pristine")], ids=["wasm-actors", "native-pristine"]
)
async def durable(request, db_dir: Path, clock: FakeClock, bundler) -> AsyncIterator[DurableEngine]:
    """Every server test runs on both engines and both sandbox modes: the default (WASM, an
    instance's events run on its live actor, many per VM) and the native one with a pristine
    sandbox per event (``sandbox_mode`` pristine): both must behave the same. Live actors
    themselves are tested on both engines in test_instances.py."""
    engine_name, mode = request.param
    engine = DurableEngine(settings_for(db_dir, engine=engine_name, sandbox_mode=mode), clock=clock, bundler=bundler)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@pytest.fixture
async def deploy(durable: DurableEngine) -> Deployment:
    org_id = await durable.store.create_org(ORG_NAME, durable.clock.now_ms())
    return Deployment(durable, org_id)


@pytest.fixture
async def nodes(tmp_path: Path, pg_url: str, bundler) -> AsyncIterator[tuple[Api, Api]]:
    """Node A (it bootstraps the database) and node B, both on ``pg_url``."""
    async for a in api_client(tmp_path, bundler, pg_url):
        settings = Settings(database_url=pg_url, node_id="node-b", workers=2, lease_ttl_s=1.0)
        async with TestClient(TestServer(create_app(settings, bundler=bundler))) as client:
            yield a, Api(client, a.admin_token, a.org_id)
