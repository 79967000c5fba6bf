"""Fast restart (issue 17, part 5): a restarted real ``statehost serve`` prepares the versions in use
before it binds its port, from the machine images it persisted, so its first event to an existing
instance prepares nothing. Asserted on the counters ``GET /health`` exposes, never on time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from runtime.wasm_build import cache_dir
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
