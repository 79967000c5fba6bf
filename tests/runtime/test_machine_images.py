"""Persisted machine images (runtime/engines/image_cache.py, QuickJSWasmEngine.prepare): a version
loaded from disk behaves exactly as one prepared by evaluating its bundle; a damaged file is found
and rebuilt; any change to what determines the image misses; the size bound evicts the least
recently used. Real QuickJS in wasm, real files in a temporary folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runtime import FakeClock, Limits, Upload
from runtime.engines.image_cache import ImageCache
from runtime.engines.quickjs_wasm import QuickJSWasmEngine, WasmRuntime, _ImageOpener
from tests.scenarios import all_fixtures, bundle_fixture, run_scenario
from tests.support import ALLOW_ALL, HEADER

FIXTURES = [f for f in all_fixtures() if f.name in ("toggle", "traffic_light", "crypto_text", "counter")]
MB = 2**20


def _engine(bundler, folder: Path, max_bytes: int = 256 * MB) -> QuickJSWasmEngine:
    return QuickJSWasmEngine(bundler.runtime_api, WasmRuntime.get(), image_cache_bytes=max_bytes, image_dir=folder)


def _images(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.img"))


def _runs(prepared) -> tuple[tuple[int, bytes], ...]:
    opener = prepared._opener
    assert isinstance(opener, _ImageOpener)
    return opener.image.runs


def test_both_majors_are_covered():
    assert {f.major for f in FIXTURES} == {4, 5} and len(FIXTURES) >= 6


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.id)
async def test_a_restored_image_gives_the_same_rounds_and_snapshots(
    fixture, bundler, executor, transport, stub_url, tmp_path
):
    bundle = bundle_fixture(bundler, fixture)
    first = _engine(bundler, tmp_path)
    fresh = first.prepare(bundle)
    assert first.prepare_stats == {"evaluated": 1, "loaded": 0}
    assert len(_images(tmp_path)) == 1
    # a new engine (a restarted server) finds it: nothing is evaluated
    second = _engine(bundler, tmp_path)
    restored = second.prepare(bundle)
    assert second.prepare_stats == {"evaluated": 0, "loaded": 1}
    assert (restored.major, restored.exports) == (fresh.major, fresh.exports) == (fixture.major, restored.exports)
    assert _runs(restored) == _runs(fresh)
    scenario = fixture.load_scenario(stub_url)
    outputs = []
    for prepared in (fresh, restored):
        persisted: list = []
        results = await run_scenario(
            prepared,
            scenario,
            executor=executor,
            transport=transport,
            clock=FakeClock(1_700_000_000_000),
            persisted_log=persisted,
        )
        outputs.append((results, persisted))
    assert outputs[0][1], "the scenario persisted nothing"
    assert outputs[1] == outputs[0]


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1 :])
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "flipped", "empty"])
def test_a_damaged_image_is_detected_and_rebuilt(how, bundler, tmp_path):
    bundle = bundle_fixture(bundler, FIXTURES[0])
    _engine(bundler, tmp_path).prepare(bundle)
    (path,) = _images(tmp_path)
    good = path.read_bytes()
    _damage(path, how)
    engine = _engine(bundler, tmp_path)
    engine.prepare(bundle)
    assert engine.prepare_stats == {"evaluated": 1, "loaded": 0}
    assert engine.images is not None and engine.images.stats["corrupt"] == 1
    assert path.read_bytes()[-1000:] == good[-1000:] and len(path.read_bytes()) == len(good)  # rebuilt
    again = _engine(bundler, tmp_path)
    again.prepare(bundle)
    assert again.prepare_stats == {"evaluated": 0, "loaded": 1}


def test_an_image_is_not_used_for_another_key(bundler, tmp_path):
    """A file renamed onto another key's name is refused (the key is inside, under the hash)."""
    bundle = bundle_fixture(bundler, FIXTURES[0])
    engine = _engine(bundler, tmp_path)
    engine.prepare(bundle)
    (path,) = _images(tmp_path)
    other = engine.image_key(bundle, Limits(cpu_ms=1_234))
    path.rename(tmp_path / f"{other}.img")
    probe = _engine(bundler, tmp_path)
    probe.prepare(bundle, Limits(cpu_ms=1_234))
    assert probe.prepare_stats == {"evaluated": 1, "loaded": 0}
    assert probe.images is not None and probe.images.stats["corrupt"] == 1


def test_a_changed_limit_or_bundle_misses(bundler, tmp_path):
    fixture = FIXTURES[0]
    bundle = bundle_fixture(bundler, fixture)
    _engine(bundler, tmp_path).prepare(bundle)
    engine = _engine(bundler, tmp_path)
    engine.prepare(bundle, Limits(memory_bytes=96 * MB))
    assert engine.prepare_stats == {"evaluated": 1, "loaded": 0}
    engine.prepare(bundle, Limits(settle_window_ms=1_000))  # any limit: the key takes them all
    assert engine.prepare_stats == {"evaluated": 2, "loaded": 0}
    changed = bundler.bundle(
        Upload("machine.ts", fixture.source.read_bytes() + b"\nexport const changed = 1;\n", xstate_major=fixture.major)
    )
    assert changed.hash != bundle.hash
    engine.prepare(changed)
    assert engine.prepare_stats == {"evaluated": 3, "loaded": 0}
    engine.prepare(bundle)  # the original still loads
    assert engine.prepare_stats == {"evaluated": 3, "loaded": 1}
    assert len(_images(tmp_path)) == 4


def _machine(major: int, n: int) -> Upload:
    body = (
        f'export default createMachine({{ id: "m{n}", initial: "a", context: {{ n: {n} }},'
        ' states: { a: { on: { go: "b" } }, b: {} } });\n'
    )
    return Upload("machine.ts", (HEADER[major] + ALLOW_ALL + body).encode(), xstate_major=major)


def test_the_size_bound_evicts_the_least_recently_used(bundler, tmp_path):
    bundles = [bundler.bundle(_machine(5, n)) for n in range(3)]
    sizing = _engine(bundler, tmp_path / "sizing")
    sizing.prepare(bundles[0])
    (one,) = _images(tmp_path / "sizing")
    size = one.stat().st_size
    folder = tmp_path / "bounded"
    engine = _engine(bundler, folder, max_bytes=int(size * 2.5))  # room for two
    engine.prepare(bundles[0])
    engine.prepare(bundles[1])
    key = [engine.image_key(b, Limits()) for b in bundles]
    past = time.time() - 100
    os.utime(folder / f"{key[1]}.img", (past, past))  # 1 was used longer ago than 0
    assert engine.images is not None
    assert engine.images.get(key[0]) is not None  # a read is a use (refreshes 0)
    engine.prepare(bundles[2])
    assert {p.stem for p in _images(folder)} == {key[0], key[2]}
    assert engine.images.stats["evicted"] == 1
    assert engine.images.total_bytes() <= engine.images.max_bytes
    engine.prepare(bundles[1])  # evicted: evaluated again
    assert engine.prepare_stats == {"evaluated": 4, "loaded": 0}


def test_an_entry_larger_than_the_bound_is_not_kept(tmp_path):
    cache = ImageCache(tmp_path, max_bytes=1_000)
    assert not cache.put("ab" * 20, {"x": 1}, bytes(2_000))
    assert cache.put("cd" * 20, {"x": 1}, bytes(100))
    entry = cache.get("cd" * 20)
    assert entry is not None and entry.header["x"] == 1 and entry.body == bytes(100)
    assert not list(tmp_path.glob("*.tmp"))


def test_without_a_cache_the_engine_evaluates_every_time(bundler, tmp_path):
    bundle = bundle_fixture(bundler, FIXTURES[0])
    engine = QuickJSWasmEngine(bundler.runtime_api, WasmRuntime.get())
    engine.prepare(bundle)
    engine.prepare(bundle)
    assert engine.images is None and engine.prepare_stats == {"evaluated": 2, "loaded": 0}
