"""Runs the in-sandbox tests of js_shims/tests/*.test.js: each file in a fresh sandbox holding the
prelude, with the real host loop (crypto answered by the host, fetches performed by the aiohttp
transport against the loopback stub)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import Executor, Limits, SystemClock
from runtime.settle import drive
from runtime.shims import SHIMS_DIR

TEST_DIR = SHIMS_DIR / "tests"
HARNESS = (TEST_DIR / "_harness.js").read_text()
FILES = sorted(TEST_DIR.glob("*.test.js"))
SOURCES = {path: path.read_text() for path in FILES}


async def _run_file(engine, executor: Executor, transport, stub_url: str, path: Path) -> list[dict]:
    limits = Limits(settle_window_ms=20_000)
    clock = SystemClock()
    sandbox = await executor.run(engine.script_sandbox, limits)
    code = f"globalThis.STUB_URL = {stub_url!r};\n{HARNESS}\n{SOURCES[path]}\n;__statehost_run_tests();"

    async def no_commit(_round, _tag) -> None:
        return None

    try:
        first = await executor.run(sandbox.run, code, clock.now_ms())
        result = await drive(
            sandbox,
            first,
            executor=executor,
            commit=no_commit,
            transport=transport,
            clock=clock,
            limits=limits,
            until_children=False,
        )
        assert result.ok, f"{path.name}: {result.error}"
        assert result.late_fault is None, f"{path.name}: {result.late_fault.error}"
        assert not result.cut_off, f"{path.name}: the tests did not finish"
        results = await executor.run(sandbox.evaluate_json, "__statehost_test_results")
    finally:
        sandbox.close()
    assert results, f"{path.name} registered no test"
    return results


def test_every_web_api_has_in_sandbox_tests():
    names = {p.name.removesuffix(".test.js") for p in FILES}
    assert {
        "abort",
        "text_encoding",
        "url",
        "structured_clone",
        "crypto",
        "fetch",
        "unsupported",
        "console",
        "timers",
    } <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
async def test_in_sandbox(path: Path, engine, executor, transport, stub_url):
    results = await _run_file(engine, executor, transport, stub_url, path)
    failures = [f"{r['name']}: {r['error']}" for r in results if not r["ok"]]
    assert failures == [], "\n\n".join(failures)
