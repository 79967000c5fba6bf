"""The oracle has teeth: one fixed program runs against the server and passes; copies of its run
with a lost timer, a duplicated acknowledged event, a lost acknowledged event, two events swapped,
a wrong answer and a wrong final context are each rejected."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import aiohttp
import pytest

from tests.oracle.harness import OracleEnv, Run, check, run_program

pytestmark = [pytest.mark.node, pytest.mark.slow]

# start n=3 resolves (cooling), ping, a 2 s wait fires the cool-down timer, snooze + 3 s fires wake,
# start n=4 rejects (failed), 5 s fires the retry timer (n=5 resolves), 2 s more cools down again.
PROGRAM: dict[str, Any] = {
    "fixture": "timed_job",
    "major": 5,
    "steps": [
        {"send": [{"type": "start", "n": 3}]},
        {"send": [{"type": "ping"}]},
        {"wait": 2000},
        {"send": [{"type": "snooze"}]},
        {"wait": 3000},
        {"send": [{"type": "start", "n": 4}]},
        {"send": [{"type": "bogus"}]},
        {"wait": 5000},
        {"wait": 2000},
    ],
}


def _timer_rows(run: Run) -> list[int]:
    return [
        k for k, row in enumerate(run.history) if "eid" not in row["event"] and row["event"]["type"] != "xstate.init"
    ]


@pytest.mark.timeout(300)
def test_the_checker_rejects_every_kind_of_divergence(oracle_env: OracleEnv):
    bundle = oracle_env.bundles[("timed_job", 5)]

    async def go() -> dict[str, list[str]]:
        async with aiohttp.ClientSession() as session:
            if not oracle_env.server.alive:
                await oracle_env.server.start(session)
            run = await run_program(oracle_env.server, session, PROGRAM)
        verdicts = {"as run": await check(oracle_env.node, bundle, run)}
        events = [k for k, row in enumerate(run.history) if "eid" in row["event"]]
        timers = [k for k in _timer_rows(run) if run.history[k]["event"]["type"].startswith("xstate.after")]
        assert len(events) >= 4 and len(timers) >= 3, run.history

        def mutant(name: str, change: Any) -> Run:
            other = copy.deepcopy(run)
            change(other)
            return other

        cases = {
            "a timer lost": lambda r: r.history.pop(timers[0]),
            "an acknowledged event twice": lambda r: r.history.insert(
                events[1] + 1, copy.deepcopy(r.history[events[1]])
            ),
            "an acknowledged event lost": lambda r: r.history.pop(events[1]),
            "two events swapped": lambda r: r.history.__setitem__(
                slice(events[0], events[1] + 1),
                [r.history[events[1]], *r.history[events[0] + 1 : events[1]], r.history[events[0]]],
            ),
            "a wrong answer": lambda r: r.sent[1].answer[1].__setitem__("publicContext", {"pings": 99}),
            "a wrong final context": lambda r: r.admin["context"]["public"].__setitem__("wakes", 7),
            "a stranger event": lambda r: r.history.append(
                {"state": "idle", "event": {"type": "ping", "eid": "e99.0"}}
            ),
        }
        for name, change in cases.items():
            verdicts[name] = await check(oracle_env.node, bundle, mutant(name, change))
        return verdicts

    verdicts = asyncio.run(go())
    assert verdicts.pop("as run") == []
    for name, problems in verdicts.items():
        assert problems, f"the checker accepted a run with {name}"
