"""Fast restart (issue 17, part 5): a restarted real ``statehost serve`` prepares the versions in use
before it binds its port, from the machine images it persisted, so its first event to an existing
instance prepares nothing. Asserted on the counters ``GET /health`` exposes, never on time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from runtime import FakeClock
from runtime.wasm_build import cache_dir
from server.engine import DurableEngine
from tests.server.conftest import ORG_NAME, Deployment, settings_for
from tests.server.test_storage_faults import ServeProcess


def _private_cache(tmp_path: Path) -> Path:
    """A cache folder of its own (machine images, compiled modules), holding links to the built
    guest and compiled prelude of the shared one (so nothing is rebuilt)."""
    mine = tmp_path / "cache"
    mine.mkdir(mode=0o700)
    for item in cache_dir().iterdir():
        if item.is_file() and not item.name.startswith("machine-"):
            (mine / item.name).symlink_to(item)
    return mine


async def _health(api: Any) -> dict[str, Any]:
    status, body = await api.call("GET", "/health")
    assert status == 200, body
    return dict(body["machines"])


async def _toggle(api: Any) -> Any:
    status, body = await api.call("POST", "/machines/toggle/i/i1/events", body={"event": {"type": "toggle"}})
    assert status == 200, body
    return body["state"]


async def test_a_restarted_server_answers_its_first_event_without_preparing(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("STATEHOST_CACHE", str(_private_cache(tmp_path)))
    images = tmp_path / "cache" / "machine-images"
    data = tmp_path / "data"
    node = ServeProcess(data, "--engine", "quickjs-wasm")
    await node.start()
    try:
        async with ClientSession(base_url=node.base) as session:
            api = node.api(session)
            await api.deploy("toggle")
            status, body = await api.call("POST", "/machines/toggle", body={"slug": "i1"})
            assert status == 200, body
            first = await _toggle(api)
            machines = await _health(api)
            assert machines["warmed"] == 0 and machines["evaluated"] == 1, machines  # the upload's prepare
    finally:
        assert await node.stop() == 0, node.tail()
    assert len(list(images.glob("*.img"))) == 1

    node = ServeProcess(data, "--engine", "quickjs-wasm")
    await node.start()
    try:
        async with ClientSession(base_url=node.base) as session:
            api = node.api(session)
            # ready means prepared: the version was loaded from its image before the port opened
            machines = await _health(api)
            assert machines.pop("warm_up_s") >= 0
            assert machines == {"warmed": 1, "on_demand": 0, "evaluated": 0, "loaded": 1}
            second = await _toggle(api)
            assert second != first  # it did toggle, from the committed state
            machines = await _health(api)
            assert (machines["on_demand"], machines["evaluated"], machines["loaded"]) == (0, 0, 1), machines
    finally:
        assert await node.stop() == 0, node.tail()

    # the native engine has no image to keep: its warm-up evaluates the bundle, still before ready
    node = ServeProcess(data, "--engine", "quickjs-native")
    await node.start()
    try:
        async with ClientSession(base_url=node.base) as session:
            api = node.api(session)
            assert (await _toggle(api)) == first
            machines = await _health(api)
            assert (machines["warmed"], machines["on_demand"]) == (1, 0), machines
            assert "loaded" not in machines
    finally:
        assert await node.stop() == 0, node.tail()
    assert os.environ["STATEHOST_CACHE"].startswith(str(tmp_path))


async def test_without_images_the_restart_evaluates_at_warm_up(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("STATEHOST_CACHE", str(_private_cache(tmp_path)))
    data = tmp_path / "data"
    for run in range(2):
        node = ServeProcess(data, "--engine", "quickjs-wasm", "--machine-image-cache-mb", "0")
        await node.start()
        try:
            async with ClientSession(base_url=node.base) as session:
                api = node.api(session)
                if run == 0:
                    await api.deploy("toggle")
                    status, body = await api.call("POST", "/machines/toggle", body={"slug": "i1"})
                    assert status == 200, body
                    continue
                machines = await _health(api)
                assert (machines["warmed"], machines["evaluated"], machines["loaded"]) == (1, 1, 0), machines
                await _toggle(api)
                assert (await _health(api))["on_demand"] == 0
        finally:
            assert await node.stop() == 0, node.tail()
    assert not (tmp_path / "cache" / "machine-images").exists()


TOGGLE_BODY = (
    'export default createMachine({ id: "t", initial: "off", states: { off: { on: { go: "on" } }, on: {} } });\n'
)


@pytest.mark.parametrize("engine_name", ["quickjs-wasm", "quickjs-native"])
async def test_the_warm_up_prepares_the_current_versions_in_use_newest_first_within_its_bounds(
    engine_name, db_dir: Path, clock: FakeClock, bundler, tmp_path: Path, monkeypatch
):
    """Both databases (SQLite, PostgreSQL), both engines: machines with instances are warmed, the
    newest deployment first; one without instances is not; the count bound holds."""
    monkeypatch.setenv("STATEHOST_CACHE", str(_private_cache(tmp_path)))
    settings = settings_for(db_dir, engine=engine_name)
    first = DurableEngine(settings, clock=clock, bundler=bundler)
    await first.start()
    try:
        deploy = Deployment(first, await first.store.create_org(ORG_NAME, clock.now_ms()))
        versions = {}
        for slug in ("older", "newer", "unused"):
            versions[slug] = await deploy.machine(slug, TOGGLE_BODY.replace('"t"', f'"{slug}"'))
            clock.advance(1_000)
        for slug in ("older", "newer"):
            await first.instances.create(deploy.org_id, slug, "i1")
    finally:
        await first.stop()

    for bound, expected in ((1, ["newer"]), (64, ["newer", "older"])):
        engine = DurableEngine(settings, clock=clock, bundler=bundler)
        await engine.start()
        try:
            assert await engine.store.versions_to_warm(64) == [versions["newer"], versions["older"]]
            report = await engine.instances.warm_up(bound, 5.0)
            assert (report["candidates"], report["warmed"]) == (len(expected), len(expected))
            assert set(engine.instances.machines.versions()) == {versions[slug] for slug in expected}
            for slug in ("older", "newer"):
                state = await engine.instances.send_event(deploy.org_id, slug, "i1", {"type": "go"}, None)
                assert state.state == "on"
            counts = engine.instances.prepare_counts
            assert (counts["warmed"], counts["on_demand"]) == (len(expected), 2 - len(expected))
        finally:
            await engine.stop()
