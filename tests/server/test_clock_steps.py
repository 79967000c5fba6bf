"""The wall clock stepping back and forward (an NTP step, an operator fixing the time) under a
running engine, on SQLite and PostgreSQL, both engines (docs/durability.md, "Storage faults" →
clock steps):

- history timestamps stay strictly increasing per instance (``max(now, previous + 1)``), and the
  instance's ``ts`` follows its history;
- timers keep their absolute deadlines: stepped back, a timer does not fire when its delay has
  passed in real time, only when the clock reaches its due time again; stepped forward past it, it
  fires at once (within the timer loop's clock recheck), not when a sleep computed before the step
  would have ended.

The clock is a real wall clock with an offset the test steps (``SteppedClock``): ``sleep_until``
is SystemClock's own (it sleeps the remaining real time), so the engine meets a step exactly as it
would meet one of the system clock.
"""

from __future__ import annotations

import itertools

import pytest

from runtime.clock import SystemClock
from server.engine import DurableEngine
from server.timers import CLOCK_RECHECK_S
from tests.server.conftest import Deployment, eventually

HOUR = 3_600_000
DAY = 24 * HOUR

MACHINE = """
export default createMachine({
  id: "k", predictableActionArguments: true, initial: "idle", context: { public: { n: 0 } },
  states: {
    idle: { on: { inc: { actions: assign({ public: (c) => ({ n: c.public.n + 1 }) }) }, soon: "soon", tomorrow: "tomorrow" } },
    soon: { after: { 1500: "fired" } },
    tomorrow: { after: { 86400000: "fired" } },
    fired: { on: { inc: { actions: assign({ public: (c) => ({ n: c.public.n + 1 }) }) } } },
  },
});
"""


class SteppedClock(SystemClock):
    """The system's wall clock plus an offset that ``step`` moves, either way."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return super().now_ms() + self.offset_ms

    def step(self, ms: int) -> None:
        self.offset_ms += ms


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


async def _history(engine: DurableEngine, org_id: str, name: str) -> tuple[int, list[tuple[int, str, str]]]:
    """The instance's ts and its history as (ts, state, event type)."""
    row = await engine.store.find_instance(await engine.store.machine_id(org_id, "k"), name)
    assert row is not None
    transitions = await engine.store.transitions(row.id)
    assert [t.seq for t in transitions] == list(range(1, row.seq + 1))
    return row.ts, [(t.ts, t.state, t.event.get("type", "")) for t in transitions]


def _strictly_increasing(stamps: list[int]) -> bool:
    return all(b > a for a, b in itertools.pairwise(stamps))


async def test_history_timestamps_stay_monotonic_when_the_clock_steps_back_and_forward(
    durable: DurableEngine, deploy: Deployment, clock: SteppedClock
):
    await deploy.machine("k", MACHINE)
    await durable.instances.create(deploy.org_id, "k", "i1")
    before = (await durable.instances.send_event(deploy.org_id, "k", "i1", "inc", {})).ts
    clock.step(-HOUR)
    answered = [(await durable.instances.send_event(deploy.org_id, "k", "i1", "inc", {})).ts for _ in range(3)]
    # The clock is an hour behind: each transition is stamped one ms after the previous one.
    assert answered == [before + 1, before + 2, before + 3]
    clock.step(DAY)
    after = (await durable.instances.send_event(deploy.org_id, "k", "i1", "inc", {})).ts
    assert after >= clock.now_ms() - 60_000 and after > answered[-1]  # the clock's own time again
    ts, history = await _history(durable, deploy.org_id, "i1")
    stamps = [t for t, _, _ in history]
    assert _strictly_increasing(stamps), stamps
    assert ts == stamps[-1] == after
    assert (await durable.instances.read(deploy.org_id, "k", "i1", None)).public_context == {"n": 5}


async def test_a_timer_keeps_its_absolute_deadline_when_the_clock_steps_back(
    durable: DurableEngine, deploy: Deployment, clock: SteppedClock
):
    await deploy.machine("k", MACHINE)
    await durable.instances.create(deploy.org_id, "k", "i1")
    armed = await durable.instances.send_event(deploy.org_id, "k", "i1", "soon", {})
    row = await durable.store.find_instance(await durable.store.machine_id(deploy.org_id, "k"), "i1")
    assert row is not None
    (timer,) = await durable.store.timers_of(row.id)
    assert armed.ts <= timer.due_ms <= armed.ts + 1500 + 1000  # stamped with the commit's clock
    timers = durable.timers
    assert timers is not None

    async def loop_asleep() -> bool:  # the timer loop waits for this deadline
        return timers.waiting_for == timer.due_ms

    await eventually(loop_asleep)
    clock.step(-HOUR)
    real = SystemClock()
    # Its delay passes in real time, and several clock rechecks of the timer loop with it ...
    real_due = timer.due_ms + int(3 * CLOCK_RECHECK_S * 1000)

    async def delay_passed() -> bool:
        return real.now_ms() > real_due

    await eventually(delay_passed, within_s=30)
    # ... but on the stepped clock it is not due: it has not fired, nor been touched.
    assert (await durable.instances.read(deploy.org_id, "k", "i1", None)).state == "soon"
    assert await durable.store.timers_of(row.id) == [timer]
    assert durable.timers is not None and durable.timers.delivered == 0
    # The clock reaches the due time again: it fires, once, stamped after everything before it.
    clock.step(HOUR)

    async def fired() -> bool:
        return (await durable.instances.read(deploy.org_id, "k", "i1", None)).state == "fired"

    await eventually(fired, within_s=30)
    assert await durable.store.timers_of(row.id) == []
    _ts, history = await _history(durable, deploy.org_id, "i1")
    assert [e for _, _, e in history] == ["xstate.init", "soon", "xstate.after(1500)#k.soon"]
    assert _strictly_increasing([t for t, _, _ in history])


async def test_a_timer_fires_at_once_when_the_clock_steps_forward_past_its_deadline(
    durable: DurableEngine, deploy: Deployment, clock: SteppedClock
):
    """The timer loop sleeps until the next due time (a day away here); a step forward of two days
    must not wait for that sleep to end."""
    await deploy.machine("k", MACHINE)
    await durable.instances.create(deploy.org_id, "k", "i1")
    await durable.instances.send_event(deploy.org_id, "k", "i1", "tomorrow", {})
    row = await durable.store.find_instance(await durable.store.machine_id(deploy.org_id, "k"), "i1")
    assert row is not None
    (timer,) = await durable.store.timers_of(row.id)
    timers = durable.timers
    assert timers is not None

    async def loop_asleep() -> bool:  # the timer loop waits for this deadline, a day away
        return timers.waiting_for == timer.due_ms

    await eventually(loop_asleep)
    clock.step(2 * DAY)
    stepped_at = SystemClock().now_ms()

    async def fired() -> bool:
        return (await durable.instances.read(deploy.org_id, "k", "i1", None)).state == "fired"

    await eventually(fired, within_s=30)
    assert SystemClock().now_ms() - stepped_at < 30_000
    assert await durable.store.timers_of(row.id) == []
    assert durable.timers is not None and durable.timers.delivered == 1
    _ts, history = await _history(durable, deploy.org_id, "i1")
    assert [e for _, _, e in history] == ["xstate.init", "tomorrow", "xstate.after(86400000)#k.tomorrow"]
    assert history[-1][0] >= timer.due_ms  # stamped with the stepped clock, after the deadline
    assert _strictly_increasing([t for t, _, _ in history])
