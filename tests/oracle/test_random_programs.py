"""Random event programs against a real ``statehost serve`` that is SIGKILLed and restarted at random
points, checked against XState in node (tests/oracle/harness.py explains programs and the check).

- ``test_random_programs_under_kills``: the bounded run for CI — ``ORACLE_EXAMPLES`` programs
  (default 14), derandomized (the same programs every run; the kill timings are real time).
- ``make soak MINUTES=30`` sets ``STATEHOST_SOAK_MINUTES``: then the test keeps drawing batches of
  programs with fresh seeds (each printed) until the time is up.

Both print the totals (programs, kills, events and timers checked) and write them as JSON to
``$STATEHOST_ORACLE_STATS`` when that is set. A failure is shrunk by hypothesis and reported with a
pasteable test that calls :func:`replay`.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.oracle.harness import ALPHABETS, BAD_REQUESTS, STATS, UNKNOWN_EVENTS, WAITS, OracleEnv, replay

pytestmark = [pytest.mark.node, pytest.mark.slow]

ENGINE = os.environ.get("STATEHOST_ORACLE_ENGINE", "quickjs-wasm")
EXAMPLES = int(os.environ.get("ORACLE_EXAMPLES", "14"))
SOAK_MINUTES = float(os.environ.get("STATEHOST_SOAK_MINUTES", "0"))
SOAK_BATCH = 50
"""Programs per seed: hypothesis starts every batch with the simplest programs, so batches are long."""


# ---- programs ----------------------------------------------------------------------------------------


@st.composite
def programs(draw: st.DrawFn) -> dict[str, Any]:
    fixture = draw(st.sampled_from(list(ALPHABETS)))  # timed_job first: the simplest programs use it
    major = draw(st.sampled_from([4, 5]))
    # About one event in five is of a type the machine does not know.
    known = ALPHABETS[fixture]
    events = st.sampled_from(known * max(1, 12 // len(known)) + UNKNOWN_EVENTS)
    action = st.one_of(
        events.map(lambda e: {"send": [e]}),
        events.map(lambda e: {"send": [e]}),
        events.map(lambda e: {"send": [e]}),
        st.lists(events, min_size=2, max_size=3).map(lambda es: {"send": es}),
        st.sampled_from(BAD_REQUESTS).map(lambda b: {"bad": b}),
        st.just({"kill": True}),
    )
    # Kills during a step (real milliseconds): rare per step, so a program has a few.
    kill_during = st.sampled_from([None] * 90 + list(range(16)))  # about one step in seven
    # A program is a few segments: some actions, then the clock moves (by 0 sometimes).
    segment = st.tuples(
        st.lists(st.tuples(action, kill_during), min_size=1, max_size=3), st.sampled_from(WAITS), kill_during
    )
    steps = []
    for actions, wait, wait_kill in draw(st.lists(segment, min_size=2, max_size=6)):
        for body, kill_after in [*actions, ({"wait": wait}, wait_kill)]:
            if kill_after is not None and "kill" not in body:
                body = {**body, "kill_after_ms": kill_after}
            steps.append(body)
    program: dict[str, Any] = {"fixture": fixture, "major": major, "steps": steps}
    create_kill = draw(st.sampled_from([None] * 48 + list(range(16))))
    if create_kill is not None:
        program["create_kill_after_ms"] = create_kill
    return program


def _settings(**extra: Any) -> settings:
    return settings(
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=False,
        **extra,
    )


@pytest.mark.timeout(int(SOAK_MINUTES * 60) + 900)
def test_random_programs_under_kills(oracle_env: OracleEnv):
    if SOAK_MINUTES > 0:
        _soak(oracle_env)
        return

    @_settings(max_examples=EXAMPLES, derandomize=True)
    @given(programs())
    def run(program: dict[str, Any]) -> None:
        replay(oracle_env, program)

    run()
    assert STATS.programs >= EXAMPLES, f"only {STATS.programs} programs were checked"
    assert STATS.kills > 0, "no program killed the server"
    assert STATS.timers_checked > 0, "no timer fired"


def _soak(env: OracleEnv) -> None:
    deadline = time.monotonic() + SOAK_MINUTES * 60
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        chosen = random.SystemRandom().randrange(2**32)
        print(f"soak round {rounds}: seed {chosen} (rerun with @seed({chosen}))", flush=True)

        @seed(chosen)
        @_settings(max_examples=SOAK_BATCH)
        @given(programs())
        def run(program: dict[str, Any]) -> None:
            replay(env, program)

        run()
        print("totals so far: " + json.dumps(STATS.as_dict()), flush=True)
