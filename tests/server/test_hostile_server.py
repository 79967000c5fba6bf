"""Hostile machines through a running ``statehost serve``, on each engine: every kind of the runtime
suite's hostile machines (tests/runtime/test_hostile.py, plus a 500 KB context, a log flood and a
host-answered async loop), on XState 4 and 5, uploaded through the API while ordinary clients drive
ordinary instances. Correctness only (bench/hostile.py measures the latency): each hostile event gets
the wire contract's answer (422 ``machine-error`` with ``limit`` naming the limit it hit, or the 200 a
capped log flood gets), every ordinary event is answered 200, every ordinary instance's history holds
every acknowledged event in order, every hostile instance keeps its last good state, and the server
process is alive with ``/health`` 200 at the end.

``--cpu-ms 500`` (the per-entry CPU limit, a real ``statehost serve`` flag) keeps the looping kinds
short. One hostile event at a time: on the native engine the CPU limit reads the process's CPU clock
(docs/threat-model.md), so a sibling hostile loop counts against an ordinary entry too; one sibling
at most leaves an ordinary entry (a few ms of CPU) two orders of magnitude below the limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.hostile import KINDS, run
from bench.servers import StatehostServer


@pytest.fixture(params=["quickjs-wasm", "quickjs-native"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StatehostServer]:
    process = StatehostServer(tmp_path, extra=["--engine", request.param, "--cpu-ms", "500"])
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


async def test_hostile_machines_get_their_limits_and_ordinary_clients_keep_being_served(server: StatehostServer):
    report = await run(
        server,
        machines=2 * len(KINDS),  # every kind on both majors
        clients=3,
        hostile_clients=1,
        seconds=None,
        events_per_client=15,
        hostile_rounds=1,
    )
    assert report.violations == []
    # every kind answered as the contract says, on both of its machines
    answered = {outcome.split(" ")[0] for outcome in report.outcomes}
    assert answered == set(KINDS)
    assert sum(report.outcomes.values()) == 2 * len(KINDS)
    for outcome in report.outcomes:
        kind, status, limit = outcome.split(" ")
        assert int(status) == KINDS[kind].status
        assert (None if limit == "None" else limit) in KINDS[kind].limits
    assert report.ordinary_events == 3 * 15 * 2  # both phases, every event acknowledged
    assert server.process is not None and server.process.returncode is None
