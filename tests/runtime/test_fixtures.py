"""Every fixture machine's scenario, both XState majors: in the sandbox, against its expectations,
against real XState in node (differential), and through persistence round trips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import StepRequest
from tests.scenarios import Fixture, all_fixtures, bundle_fixture, check_expectations, run_scenario
from tests.support import which_or_need

FIXTURES = all_fixtures()
DRIVER = Path(__file__).resolve().parent.parent / "node" / "drive.mjs"


def test_there_are_enough_fixtures():
    names = {f.name for f in FIXTURES}
    assert len(names) >= 12
    assert {4, 5} == {f.major for f in FIXTURES}


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.id)
async def test_scenario_meets_its_expectations(fixture: Fixture, bundler, engine, executor, transport, clock, stub_url):
    prepared = engine.prepare(bundle_fixture(bundler, fixture))
    scenario = fixture.load_scenario(stub_url)
    results = await run_scenario(prepared, scenario, executor=executor, transport=transport, clock=clock)
    assert check_expectations(scenario, results) == []


@pytest.mark.node
@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.id)
async def test_sandbox_matches_xstate_in_node(
    fixture: Fixture, bundler, engine, executor, transport, clock, stub_url, tmp_path
):
    node = which_or_need("node", "node is not on PATH (install Node.js 20 or later)")
    bundle = bundle_fixture(bundler, fixture)
    bundle_file = tmp_path / "bundle.js"
    bundle_file.write_text(bundle.code)
    scenario = fixture.load_scenario(stub_url)
    proc = await _run_node(
        [
            node,
            str(DRIVER),
            "--bundle",
            str(bundle_file),
            "--scenario",
            str(fixture.scenario),
            "--stub-url",
            stub_url,
        ]
    )
    reference = json.loads(proc)["results"]
    ours = await run_scenario(engine.prepare(bundle), scenario, executor=executor, transport=transport, clock=clock)
    assert ours == reference


async def _run_node(args: list[str]) -> str:
    import asyncio

    process = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    if process.returncode != 0:
        sys.stderr.write(err.decode())
        raise AssertionError(f"drive.mjs failed with exit code {process.returncode}: {err.decode()[-2000:]}")
    return out.decode()


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.id)
async def test_persist_json_restore_persist_is_stable(
    fixture: Fixture, bundler, engine, executor, transport, clock, stub_url
):
    """Every snapshot a scenario commits survives JSON and a restore in a fresh sandbox unchanged."""
    prepared = engine.prepare(bundle_fixture(bundler, fixture))
    snapshots: list = []
    await run_scenario(
        prepared,
        fixture.load_scenario(stub_url),
        executor=executor,
        transport=transport,
        clock=clock,
        persisted_log=snapshots,
    )
    assert snapshots
    for persisted in snapshots:
        text = json.dumps(persisted, sort_keys=True)
        with prepared.new_instance() as sandbox:
            request = StepRequest("restore", "fixture-instance", None, persisted=json.loads(text))
            round_ = sandbox.begin(request, clock.now_ms())
        assert round_.ok, round_.error
        assert round_.transitions == ()
        assert json.dumps(round_.persisted, sort_keys=True) == text
