"""Reliable timers, driven by a fake clock: seconds, days and years ahead, cancels, restarts,
paused instances and failing deliveries."""

from __future__ import annotations

import asyncio

import pytest

from runtime import FakeClock
from server.engine import DurableEngine
from server.timers import MAX_RETRIES, PAUSED_RETRY_MS, retry_delay_ms
from tests.server.conftest import Deployment, eventually, settings_for

DAY = 86_400_000
YEARS_3 = 3 * 365 * DAY

TIMED = {
    4: f"""
export default createMachine({{
  id: "timed", predictableActionArguments: true, initial: "idle", context: {{ public: {{ fired: 0 }} }},
  states: {{
    idle: {{ on: {{ short: "short", day: "day", years: "years" }} }},
    short: {{ after: {{ 5000: "fired" }}, on: {{ disarm: "idle" }} }},
    day: {{ after: {{ {DAY}: "fired" }} }},
    years: {{ after: {{ {YEARS_3}: "fired" }} }},
    fired: {{ entry: assign({{ public: (c) => ({{ fired: c.public.fired + 1 }}) }}), on: {{ short: "short" }} }},
  }},
}});
""",
    5: f"""
export default createMachine({{
  id: "timed", initial: "idle", context: {{ public: {{ fired: 0 }} }},
  states: {{
    idle: {{ on: {{ short: "short", day: "day", years: "years" }} }},
    short: {{ after: {{ 5000: "fired" }}, on: {{ disarm: "idle" }} }},
    day: {{ after: {{ {DAY}: "fired" }} }},
    years: {{ after: {{ {YEARS_3}: "fired" }} }},
    fired: {{ entry: assign({{ public: ({{ context }}) => ({{ fired: context.public.fired + 1 }}) }}), on: {{ short: "short" }} }},
  }},
}});
""",
}


async def state_of(engine: DurableEngine, org_id: str, name: str):
    return await engine.instances.read(org_id, "timed", name, None)


async def timers_of(engine: DurableEngine, org_id: str, name: str):
    machine_id = await engine.store.machine_id(org_id, "timed")
    row = await engine.store.find_instance(machine_id, name)
    assert row is not None
    return await engine.store.timers_of(row.id)


@pytest.mark.parametrize("major", [4, 5])
@pytest.mark.parametrize(("event", "delay"), [("short", 5000), ("day", DAY), ("years", YEARS_3)])
async def test_after_fires_on_time_and_exactly_once(durable, deploy: Deployment, clock: FakeClock, major, event, delay):
    await deploy.machine("timed", TIMED[major], major)
    await durable.instances.create(deploy.org_id, "timed", "i1")
    await durable.instances.send_event(deploy.org_id, "timed", "i1", event, {})
    start = clock.now_ms()
    (timer,) = await timers_of(durable, deploy.org_id, "i1")
    assert timer.due_ms == start + delay
    clock.advance(delay - 1)
    for _ in range(20):  # give the timer loop every chance to fire early
        await durable.store.next_timer_due()
    assert (await state_of(durable, deploy.org_id, "i1")).state == event
    clock.advance(1)

    async def fired() -> bool:
        return (await state_of(durable, deploy.org_id, "i1")).state == "fired"

    await eventually(fired)
    assert (await state_of(durable, deploy.org_id, "i1")).public_context == {"fired": 1}
    assert await timers_of(durable, deploy.org_id, "i1") == []
    machine_id = await durable.store.machine_id(deploy.org_id, "timed")
    row = await durable.store.find_instance(machine_id, "i1")
    assert row is not None
    transitions = await durable.store.transitions(row.id)
    assert [t.state for t in transitions] == ["idle", event, "fired"]
    assert transitions[-1].ts >= start + delay
    clock.advance(YEARS_3)
    await durable.store.next_timer_due()
    assert len(await durable.store.transitions(row.id)) == 3  # never twice


async def test_cancel_removes_the_timer(durable, deploy: Deployment, clock: FakeClock):
    await deploy.machine("timed", TIMED[4])
    await durable.instances.create(deploy.org_id, "timed", "i1")
    await durable.instances.send_event(deploy.org_id, "timed", "i1", "short", {})
    assert len(await timers_of(durable, deploy.org_id, "i1")) == 1
    await durable.instances.send_event(deploy.org_id, "timed", "i1", "disarm", {})
    assert await timers_of(durable, deploy.org_id, "i1") == []
    clock.advance(10_000)
    await durable.store.next_timer_due()
    assert (await state_of(durable, deploy.org_id, "i1")).state == "idle"


async def test_a_timer_in_flight_is_neither_returned_nor_claimed_again(durable, deploy: Deployment, clock: FakeClock):
    """The timer loop passes the timers it is delivering as ``exclude``: on a shared database they
    are not claimed again (a claim on a row the loop then skips would hold it from every node until
    it lapsed), on SQLite not read again."""
    await deploy.machine("timed", TIMED[4])
    for name in ("i1", "i2"):
        await durable.instances.create(deploy.org_id, "timed", name)
        await durable.instances.send_event(deploy.org_id, "timed", name, "short", {})
    store = durable.store
    now = clock.now_ms() + 5000
    rows = await store.due_timers(now, 10)
    assert len(rows) == 2
    in_flight, other = rows
    if store.shared:
        claimed = await store.claim_due_timers(now, 10, "node-a", 60_000, exclude={in_flight.id})
        assert [t.id for t in claimed] == [other.id]
        # The excluded row carries no claim: another node may take it at once.
        taken = await store.claim_due_timers(now, 10, "node-b", 60_000)
        assert [t.id for t in taken] == [in_flight.id]
    else:
        assert [t.id for t in await store.due_timers(now, 10, exclude={in_flight.id})] == [other.id]


async def test_due_timers_carry_their_owner_and_a_stale_one_delivers_nothing(
    durable, deploy: Deployment, clock: FakeClock, monkeypatch
):
    """A due timer's row names its instance (one read per batch, not one per delivery); a row read
    before its instance was deleted delivers nothing: the timer went with the instance."""
    await deploy.machine("timed", TIMED[4])
    for name in ("i1", "i2"):
        await durable.instances.create(deploy.org_id, "timed", name)
        await durable.instances.send_event(deploy.org_id, "timed", name, "short", {})
    store = durable.store
    now = clock.now_ms() + 5000
    if store.shared:
        due = await store.claim_due_timers(now, 10, "someone-else", 60_000)  # held, so the loop leaves them
    else:
        due = await store.due_timers(now, 10)
    machine_id = await store.machine_id(deploy.org_id, "timed")
    assert sorted((t.owner.name, t.owner.machine_id, t.owner.org_id, t.owner.machine_slug) for t in due if t.owner) == [
        ("i1", machine_id, deploy.org_id, "timed"),
        ("i2", machine_id, deploy.org_id, "timed"),
    ]
    reads = 0
    original = store.instance_by_id

    async def counting(instance_id: int):
        nonlocal reads
        reads += 1
        return await original(instance_id)

    monkeypatch.setattr(store, "instance_by_id", counting)
    first, second = sorted(due, key=lambda t: t.owner.name if t.owner else "")
    assert await durable.instances.deliver_timer(first) == "delivered"
    assert (await state_of(durable, deploy.org_id, "i1")).state == "fired" and reads == 0
    i2 = await store.find_instance(machine_id, "i2")
    assert i2 is not None
    await store.delete_instance(i2.id)
    assert await durable.instances.deliver_timer(second) == "gone"
    assert await store.find_instance(machine_id, "i2") is None and not await store.timer_exists(second.id)


@pytest.mark.parametrize("major", [4, 5])
async def test_a_timer_that_came_due_while_the_server_was_down_fires_at_start(db_dir, clock: FakeClock, bundler, major):
    engine = DurableEngine(settings_for(db_dir), clock=clock, bundler=bundler)
    await engine.start()
    org = await engine.store.create_org("o", clock.now_ms())
    await Deployment(engine, org).machine("timed", TIMED[major], major)
    await engine.instances.create(org, "timed", "i1")
    await engine.instances.send_event(org, "timed", "i1", "day", {})
    await engine.instances.create(org, "timed", "i2")
    await engine.instances.send_event(org, "timed", "i2", "years", {})
    await engine.stop()

    clock.advance(2 * DAY)  # down for two days
    engine = DurableEngine(settings_for(db_dir), clock=clock, bundler=bundler)
    await engine.start()
    try:

        async def fired() -> bool:
            return (await engine.instances.read(org, "timed", "i1", None)).state == "fired"

        await eventually(fired)
        assert (await engine.instances.read(org, "timed", "i2", None)).state == "years"
        clock.advance(YEARS_3)

        async def fired_later() -> bool:
            return (await engine.instances.read(org, "timed", "i2", None)).state == "fired"

        await eventually(fired_later)
    finally:
        await engine.stop()


async def test_a_paused_instance_retries_its_timer_then_drops_it(durable, deploy: Deployment, clock: FakeClock):
    await deploy.machine("timed", TIMED[4])
    await durable.instances.create(deploy.org_id, "timed", "i1")
    await durable.instances.send_event(deploy.org_id, "timed", "i1", "short", {})
    machine_id = await durable.store.machine_id(deploy.org_id, "timed")
    row = await durable.store.find_instance(machine_id, "i1")
    assert row is not None
    await durable.store.set_status(row.id, "paused")
    clock.advance(5000)
    for attempt in range(1, MAX_RETRIES + 1):

        async def retried(expected: int = attempt) -> bool:
            timers = await durable.store.timers_of(row.id)
            return bool(timers) and timers[0].attempts == expected

        await eventually(retried)
        (timer,) = await durable.store.timers_of(row.id)
        assert timer.due_ms == clock.now_ms() + PAUSED_RETRY_MS
        clock.advance(PAUSED_RETRY_MS)

    async def dropped() -> bool:
        return await durable.store.timers_of(row.id) == []

    await eventually(dropped)
    assert (await state_of(durable, deploy.org_id, "i1")).state == "short"
    logs = await durable.store.logs(deploy.org_id, instance_name="i1")
    assert any("dropped after 6 failed deliveries" in line["text"] for line in logs)


async def test_a_paused_instance_gets_its_timer_once_resumed(durable, deploy: Deployment, clock: FakeClock):
    await deploy.machine("timed", TIMED[4])
    await durable.instances.create(deploy.org_id, "timed", "i1")
    await durable.instances.send_event(deploy.org_id, "timed", "i1", "short", {})
    machine_id = await durable.store.machine_id(deploy.org_id, "timed")
    row = await durable.store.find_instance(machine_id, "i1")
    assert row is not None
    await durable.store.set_status(row.id, "paused")
    clock.advance(5000)

    async def retried_once() -> bool:
        timers = await durable.store.timers_of(row.id)
        return bool(timers) and timers[0].attempts == 1

    await eventually(retried_once)
    await durable.store.set_status(row.id, "running")
    clock.advance(PAUSED_RETRY_MS)

    async def fired() -> bool:
        return (await state_of(durable, deploy.org_id, "i1")).state == "fired"

    await eventually(fired)


FAILING = """
export default createMachine({
  id: "timed", predictableActionArguments: true, initial: "armed",
  states: { armed: { after: { 1000: { target: "done", actions: () => { throw new Error("timer action broke"); } } } }, done: {} },
});
"""


async def test_a_throwing_timer_delivery_is_retried_with_backoff_then_dropped(
    durable, deploy: Deployment, clock: FakeClock
):
    await deploy.machine("timed", FAILING)
    await durable.instances.create(deploy.org_id, "timed", "i1")
    machine_id = await durable.store.machine_id(deploy.org_id, "timed")
    row = await durable.store.find_instance(machine_id, "i1")
    assert row is not None
    clock.advance(1000)
    for attempt in range(1, MAX_RETRIES + 1):

        async def retried(expected: int = attempt) -> bool:
            timers = await durable.store.timers_of(row.id)
            return bool(timers) and timers[0].attempts == expected

        await eventually(retried)
        (timer,) = await durable.store.timers_of(row.id)
        assert timer.due_ms == clock.now_ms() + retry_delay_ms(attempt, paused=False)
        clock.advance(retry_delay_ms(attempt, paused=False))

    async def dropped() -> bool:
        return await durable.store.timers_of(row.id) == []

    await eventually(dropped)
    assert (await durable.instances.read(deploy.org_id, "timed", "i1", None)).state == "armed"
    texts = [line["text"] for line in await durable.store.logs(deploy.org_id, instance_name="i1")]
    assert sum("timer action broke" in t for t in texts) == MAX_RETRIES + 1
    assert [retry_delay_ms(n, paused=False) for n in range(1, 6)] == [1000, 4000, 16000, 30000, 30000]


SAME_ID = """
export default createMachine({ id: "timed", predictableActionArguments: true, initial: "on", context: { public: { ticks: 0 } },
  states: { on: { on: {
    later: { actions: send("tick", { delay: 1000 }) },
    stop: { actions: cancel("tick") },
    tick: { actions: assign({ public: (c) => ({ ticks: c.public.ticks + 1 }) }) },
  } } } });
"""


async def test_stored_timers_sharing_an_id_all_fire_and_cancel_reaches_the_latest(
    durable, deploy: Deployment, clock: FakeClock
):
    await deploy.machine("timed", SAME_ID)
    svc = durable.instances
    await svc.create(deploy.org_id, "timed", "i1")
    for _ in range(3):
        await svc.send_event(deploy.org_id, "timed", "i1", "later", {})
    await svc.send_event(deploy.org_id, "timed", "i1", "stop", {})
    assert len(await timers_of(durable, deploy.org_id, "i1")) == 2
    clock.advance(1000)

    async def ticked_twice() -> bool:
        return (await state_of(durable, deploy.org_id, "i1")).public_context == {"ticks": 2}

    await eventually(ticked_twice)
    assert await timers_of(durable, deploy.org_id, "i1") == []


@pytest.mark.parametrize("major", [4, 5])
async def test_timers_due_together_go_in_batches_without_a_read_per_timer(
    durable, deploy: Deployment, clock: FakeClock, monkeypatch, major
):
    """40 timers due at one instant: delivered with one read of their instances per batch (no row
    read nor timer check per delivery), their commits grouped into few transactions."""
    await deploy.machine("timed", TIMED[major], major)
    names = [f"i{n}" for n in range(40)]
    for name in names:
        await durable.instances.create(deploy.org_id, "timed", name)
        await durable.instances.send_event(deploy.org_id, "timed", name, "short", {})
    store = durable.store
    machine_id = await store.machine_id(deploy.org_id, "timed")
    ids = [row.id for name in names if (row := await store.find_instance(machine_id, name)) is not None]
    calls = {"find_instance": 0, "timer_exists": 0, "instance_by_id": 0, "instances_by_keys": 0}
    for method in calls:
        original = getattr(store, method)

        async def counting(*args, _method=method, _original=original):  # type: ignore[no-untyped-def]
            calls[_method] += 1
            return await _original(*args)

        monkeypatch.setattr(store, method, counting)
    transactions = store.batches
    clock.advance(5000)

    async def all_delivered() -> bool:
        return all([await store.timers_of(instance_id) == [] for instance_id in ids])

    await eventually(all_delivered)
    counted, transactions = dict(calls), store.batches - transactions
    monkeypatch.undo()
    for name in names:
        state = await state_of(durable, deploy.org_id, name)
        assert (state.state, state.public_context) == ("fired", {"fired": 1})
    if not store.shared:  # several nodes: one window (and lease) per timer, as before
        assert counted["find_instance"] == counted["timer_exists"] == counted["instance_by_id"] == 0, counted
        assert 1 <= counted["instances_by_keys"] <= len(names) // 8, counted
        assert transactions < len(names) // 2, transactions


async def test_events_sent_while_their_timers_are_delivered_queue_and_each_commits_once(
    durable, deploy: Deployment, clock: FakeClock
):
    """Requests that arrive while a batch holds their instances wait for (or join) its window:
    every event and every timer is committed exactly once, one after another."""
    await deploy.machine("timed", TIMED[4])
    names = [f"i{n}" for n in range(24)]
    for name in names:
        await durable.instances.create(deploy.org_id, "timed", name)
        await durable.instances.send_event(deploy.org_id, "timed", name, "short", {})
    machine_id = await durable.store.machine_id(deploy.org_id, "timed")
    rows = [row for name in names if (row := await durable.store.find_instance(machine_id, name)) is not None]
    clock.advance(5000)
    # The timer loop wakes on its own; these race it.
    answers = await asyncio.gather(
        *(durable.instances.send_event(deploy.org_id, "timed", name, "disarm", {}) for name in names)
    )
    assert len(answers) == len(names)

    async def all_delivered() -> bool:
        return all([await durable.store.timers_of(row.id) == [] for row in rows])

    await eventually(all_delivered)
    for name in names:
        row = await durable.store.find_instance(machine_id, name)
        assert row is not None
        history = await durable.store.transitions(row.id)
        assert [t.seq for t in history] == list(range(1, len(history) + 1))
        states = [t.state for t in history]
        # disarm first: the timer is cancelled and never fires; timer first: disarm means nothing in "fired"
        assert states in (["idle", "short", "idle"], ["idle", "short", "fired"]), states


FAN = """import { createMachine, assign } from "xstate";
import { spawnPersistentInstance, sendTo } from "@statebacked/machine";

export const allowRead = () => true;
export const allowWrite = () => true;
const KIDS = 12;

export default createMachine({
  id: "fan", predictableActionArguments: true, context: { kids: [] }, initial: "idle",
  states: {
    idle: { on: { go: { target: "sent", actions: assign({ kids: () => Array.from({ length: KIDS }, (_, n) =>
      spawnPersistentInstance({ machineName: "kid", machineInstanceName: `kid-${n}` }, { context: { n, pings: 0 } })) }) } } },
    sent: { entry: Array.from({ length: KIDS }, (_, n) => sendTo((ctx) => ctx.kids[n], { type: "ping" }, { delay: 1000 })) },
  },
});
"""

KID = """import { createMachine, assign } from "xstate";

export const allowRead = () => true;
export const allowWrite = ({ authContext }) => authContext.stateBackedSender?.machineName === "fan";

export default createMachine({
  id: "kid", predictableActionArguments: true, context: { n: 0, pings: 0 }, initial: "idle",
  states: { idle: { on: { ping: { actions: assign({ pings: (ctx) => ctx.pings + 1 }) } } } },
});
"""


async def test_messages_due_together_go_in_batches_and_each_arrives_once(
    durable, deploy: Deployment, clock: FakeClock, monkeypatch
):
    """Twelve delayed messages from one instance to twelve others, due at one instant: each
    receiver's allowWrite sees the sender, each gets its message once, and no receiver row is read
    per message (one read per batch)."""
    await deploy.machine("fan", FAN, 4, header=False)
    await deploy.machine("kid", KID, 4, header=False)
    store = durable.store
    await durable.instances.create(deploy.org_id, "fan", "f")
    await durable.instances.send_event(deploy.org_id, "fan", "f", "go", {})
    fan = await store.find_instance(await store.machine_id(deploy.org_id, "fan"), "f")
    kid_machine = await store.machine_id(deploy.org_id, "kid")
    assert fan is not None

    async def spawned() -> bool:  # the spawns are due at once; the pings a second later
        return len(await store.timers_of(fan.id)) == 12 and all(
            [await store.find_instance(kid_machine, f"kid-{n}") is not None for n in range(12)]
        )

    await eventually(spawned)
    calls = {"find_instance": 0, "timer_exists": 0}
    for method in calls:
        original = getattr(store, method)

        async def counting(*args, _method=method, _original=original):  # type: ignore[no-untyped-def]
            calls[_method] += 1
            return await _original(*args)

        monkeypatch.setattr(store, method, counting)
    clock.advance(1000)

    async def delivered() -> bool:
        return await store.timers_of(fan.id) == []

    await eventually(delivered)
    counted = dict(calls)
    monkeypatch.undo()
    for n in range(12):
        kid = await durable.instances.read(deploy.org_id, "kid", f"kid-{n}", None)
        assert kid.context == {"n": n, "pings": 1}
    if not store.shared:
        assert counted == {"find_instance": 0, "timer_exists": 0}, counted
