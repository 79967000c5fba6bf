"""Step semantics of the native engine, for both XState majors, with small inline machines."""

from __future__ import annotations

import json

import pytest

from runtime import InvalidMachineError, Outcome, Upload
from tests.support import ALLOW_ALL, HEADER, local, prepare

MAJORS = [4, 5]

TOGGLE = {
    4: """
export default createMachine({
  id: "toggle", predictableActionArguments: true, initial: "inactive",
  context: { public: { toggleCount: 0 }, secret: "s" },
  states: {
    inactive: { on: { toggle: "active" } },
    active: {
      entry: [assign({ public: (ctx) => ({ toggleCount: ctx.public.toggleCount + 1 }) }), () => console.log("entered active")],
      on: { toggle: "inactive", noop: { actions: () => console.log("noop handled") } },
      tags: ["on"],
    },
  },
});
""",
    5: """
export default createMachine({
  id: "toggle", initial: "inactive",
  context: { public: { toggleCount: 0 }, secret: "s" },
  states: {
    inactive: { on: { toggle: "active" } },
    active: {
      entry: [assign({ public: ({ context }) => ({ toggleCount: context.public.toggleCount + 1 }) }), () => console.log("entered active")],
      on: { toggle: "inactive", noop: { actions: () => console.log("noop handled") } },
      tags: ["on"],
    },
  },
});
""",
}


def texts(logs) -> list[str]:
    return [line.text for line in logs]


@pytest.mark.parametrize("major", MAJORS)
async def test_create_merges_context_and_reports_initial_transition(bundler, engine, executor, transport, clock, major):
    inst = local(prepare(bundler, engine, TOGGLE[major], major), executor, transport, clock)
    result = await inst.create({"public": {"toggleCount": 5}, "owner": "u1"})
    assert result.ok
    assert inst.current is not None
    assert inst.current.state == "inactive"
    assert inst.current.public_context == {"toggleCount": 5}
    assert inst.current.context == {"public": {"toggleCount": 5}, "secret": "s", "owner": "u1"}
    assert inst.current.event is not None and inst.current.event["type"] == "xstate.init"


@pytest.mark.parametrize("major", MAJORS)
async def test_restore_does_not_replay_the_last_transitions_actions(bundler, engine, executor, transport, clock, major):
    inst = local(prepare(bundler, engine, TOGGLE[major], major), executor, transport, clock)
    await inst.create()
    await inst.send("toggle")
    assert texts(inst.logs).count("entered active") == 1
    # A fresh sandbox restores the committed snapshot for each event: the entry action of the last
    # transition must not run again, and the assign must not count twice.
    result = await inst.send("noop")
    assert result.ok
    assert texts(inst.logs).count("entered active") == 1
    assert texts(inst.logs).count("noop handled") == 1
    assert inst.current is not None and inst.current.public_context == {"toggleCount": 1}
    assert inst.current.tags == ("on",)
    await inst.send({"type": "toggle"})
    await inst.send("toggle")
    assert inst.current.public_context == {"toggleCount": 2}
    assert [t.state for t in inst.history] == ["inactive", "active", "active", "inactive", "active"]


@pytest.mark.parametrize("major", MAJORS)
async def test_authorizers_receive_the_documented_arguments(bundler, engine, executor, transport, clock, major):
    body = (
        TOGGLE[major]
        + """
export const allowWrite = (req) => { console.log(JSON.stringify(req)); return req.authContext.userId === "u1"; };
export const allowRead = (req) => { console.log(JSON.stringify(req)); return req.authContext.role === "admin"; };
"""
    )
    source = HEADER[major] + body
    prepared = engine.prepare(bundler.bundle(Upload("m.ts", source.encode(), xstate_major=major)))
    inst = local(prepared, executor, transport, clock, name="inst-7")
    assert (await inst.create({"x": 1}, {"userId": "u1"})).ok
    init = json.loads(inst.logs[-1].text)
    assert init == {
        "type": "initialization",
        "machineInstanceName": "inst-7",
        "context": {"x": 1},
        "authContext": {"userId": "u1"},
    }
    assert (await inst.send({"type": "toggle", "n": 2}, {"userId": "u1"})).ok
    event_arg = json.loads(next(line.text for line in inst.logs if '"type":"event"' in line.text))
    assert event_arg["state"] == "inactive"
    assert event_arg["event"] == {"type": "toggle", "n": 2}
    assert event_arg["context"]["secret"] == "s"

    denied = await inst.send("toggle", {"userId": "u2"})
    assert denied.outcome is Outcome.DENIED
    assert inst.current is not None and inst.current.state == "active"

    allowed = await inst.read({"role": "admin"})
    refused = await inst.read({"role": "user"})
    assert allowed.allowed and not refused.allowed
    read_arg = json.loads(allowed.logs[0].text)
    assert read_arg == {
        "machineInstanceName": "inst-7",
        "state": "active",
        "context": {"public": {"toggleCount": 1}, "secret": "s", "x": 1},
        "authContext": {"role": "admin"},
    }


@pytest.mark.parametrize("major", MAJORS)
@pytest.mark.parametrize(
    ("authorizer", "log_fragment"),
    [
        ("() => { throw new Error('nope'); }", "allowWrite threw"),
        ("() => 'yes'", "returned a string"),
        ("() => Promise.resolve(true)", "returned a Promise"),
    ],
)
async def test_misbehaving_write_authorizer_is_a_logged_denial(
    bundler, engine, executor, transport, clock, major, authorizer, log_fragment
):
    source = (
        HEADER[major]
        + TOGGLE[major]
        + f"export const allowWrite = {authorizer};\nexport const allowRead = () => true;\n"
    )
    prepared = engine.prepare(bundler.bundle(Upload("m.ts", source.encode(), xstate_major=major)))
    inst = local(prepared, executor, transport, clock)
    result = await inst.create()
    assert result.outcome is Outcome.DENIED
    assert inst.persisted is None
    assert any(log_fragment in line.text and line.stream == "stderr" for line in inst.logs)


@pytest.mark.parametrize("major", MAJORS)
async def test_bad_events_are_rejected_before_the_guest_runs(bundler, engine, executor, transport, clock, major):
    inst = local(prepare(bundler, engine, TOGGLE[major], major), executor, transport, clock)
    await inst.create()
    before = inst.persisted
    assert (await inst.send({"no": "type"})).outcome is Outcome.INVALID_EVENT
    huge = await inst.send({"type": "toggle", "blob": "x" * 70_000})
    assert huge.outcome is Outcome.EXCEEDED_EVENT_SIZE
    assert "max_event_bytes" in (huge.error or "")
    assert inst.persisted == before


@pytest.mark.parametrize("major", MAJORS)
async def test_events_to_a_done_instance_change_nothing(bundler, engine, executor, transport, clock, major):
    body = 'export default createMachine({ id: "f", initial: "a", states: { a: { on: { go: "end" } }, end: { type: "final" } } });'
    inst = local(prepare(bundler, engine, body, major), executor, transport, clock)
    await inst.create()
    await inst.send("go")
    assert inst.current is not None and inst.current.done
    before = inst.persisted
    result = await inst.send("go")
    assert result.ok
    assert all(not r.transitions for r in result.committed)
    assert inst.persisted == before


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("export default 42;\n" + ALLOW_ALL, "not an XState machine"),
        (
            HEADER[4]
            + 'export default createMachine({ initial: "a", states: { a: {} } });\nexport const allowWrite = () => true;',
            "allowRead",
        ),
        (
            HEADER[4]
            + 'export default createMachine({ initial: "a", states: { a: {} } });\nexport const allowRead = () => true;\nexport const allowWrite = 1;',
            "allowWrite",
        ),
        ("throw new Error('broken at load');\n" + ALLOW_ALL, "broken at load"),
        ("for (;;) {}\n" + ALLOW_ALL, "cpu_ms"),
    ],
)
def test_prepare_rejects_modules_that_are_not_machines(bundler, engine, source, message):
    with pytest.raises(InvalidMachineError, match=message):
        engine.prepare(bundler.bundle(Upload("m.ts", source.encode(), xstate_major=4)))


def test_prepare_rejects_a_v5_machine_bundled_for_v4(bundler, engine):
    # A v5-style machine whose imports also exist in v4 bundles fine against v4; the probe of the
    # loaded machine cannot tell (it *is* a v4 machine then), so the declared major is what counts.
    source = (
        HEADER[5].replace(", setup", "").replace(", fromPromise", "")
        + ALLOW_ALL
        + ('export default createMachine({ initial: "a", states: { a: {} } });')
    )
    prepared = engine.prepare(bundler.bundle(Upload("m.ts", source.encode(), xstate_major=5)))
    assert prepared.major == 5


@pytest.mark.parametrize("major", MAJORS)
async def test_timers_are_reported_with_stable_ids_and_cancelled(bundler, engine, executor, transport, clock, major):
    send_later = (
        'send("ring", { delay: 60000, id: "alarm" })'
        if major == 4
        else 'raise({ type: "ring" }, { delay: 60000, id: "alarm" })'
    )
    body = f"""
export default createMachine({{
  id: "alarm", initial: "idle", {"predictableActionArguments: true," if major == 4 else ""}
  states: {{
    idle: {{ on: {{ arm: "armed" }} }},
    armed: {{
      entry: {send_later},
      after: {{ 5000: "snoozed" }},
      on: {{ disarm: {{ target: "idle", actions: cancel("alarm") }}, ring: "ringing" }},
    }},
    snoozed: {{ on: {{ ring: "ringing" }} }},
    ringing: {{}},
  }},
}});
"""
    inst = local(prepare(bundler, engine, body, major), executor, transport, clock)
    await inst.create()
    await inst.send("arm")
    after_id = "xstate.after(5000)#alarm.armed" if major == 4 else "xstate.after.5000.alarm.armed"
    assert inst.timer_keys() == {"alarm", after_id}
    assert next(r for r in inst.timers.values() if r.key == "alarm").due_ms == clock.now_ms() + 60000
    await inst.send("disarm")
    assert inst.timers == {}
    await inst.send("arm")
    start = clock.now_ms()
    await inst.advance_to(start + 5000, clock.set)
    assert inst.current is not None and inst.current.state == "snoozed"
    assert inst.timer_keys() == {"alarm"}
    await inst.advance_to(start + 60000, clock.set)
    assert inst.current.state == "ringing"
    assert inst.timers == {}


SAME_ID = {
    4: """
export default createMachine({ id: "t", predictableActionArguments: true, initial: "on", context: { public: { ticks: 0 } },
  states: { on: { on: {
    later: { actions: send("tick", { delay: 1000 }) },
    again: { actions: send("tick", { delay: 2000, id: "tick" }) },
    stop: { actions: cancel("tick") },
    tick: { actions: assign({ public: (c) => ({ ticks: c.public.ticks + 1 }) }) },
  } } } });
""",
    5: """
export default createMachine({ id: "t", initial: "on", context: { public: { ticks: 0 } },
  states: { on: { on: {
    later: { actions: raise({ type: "tick" }, { delay: 1000, id: "tick" }) },
    again: { actions: raise({ type: "tick" }, { delay: 2000, id: "tick" }) },
    stop: { actions: cancel("tick") },
    tick: { actions: assign({ public: ({ context }) => ({ ticks: context.public.ticks + 1 }) }) },
  } } } });
""",
}


@pytest.mark.parametrize("major", MAJORS)
async def test_delayed_events_sharing_an_id_all_fire_and_cancel_reaches_the_latest(
    bundler, engine, executor, transport, clock, major
):
    inst = local(prepare(bundler, engine, SAME_ID[major], major), executor, transport, clock)
    await inst.create()
    await inst.send("later")
    await inst.send("later")
    assert len(inst.timers) == 2  # XState keeps both pending (only its id map is overwritten)
    await inst.advance_to(clock.now_ms() + 1000, clock.set)
    assert inst.current is not None and inst.current.public_context == {"ticks": 2}
    await inst.send("later")
    await inst.send("again")
    await inst.send("stop")  # reaches only the most recent one, as in XState
    assert [row.due_ms - clock.now_ms() for row in inst.timers.values()] == [1000]
    await inst.advance_to(clock.now_ms() + 5000, clock.set)
    assert inst.current.public_context == {"ticks": 3}


async def test_v4_delayed_send_to_internal_from_the_initial_state_is_durable(
    bundler, engine, executor, transport, clock
):
    # Real XState 4 (predictableActionArguments) fires a delayed send to "#_internal" only from the
    # initial state's entry, which start() runs; from later transitions it never fires (checked in
    # node). statehost matches both: the first is a durable timer, the others do nothing.
    body = """
export default createMachine({ id: "t", predictableActionArguments: true, initial: "waiting",
  states: { waiting: { entry: send("tick", { delay: 3000, to: "#_internal" }), on: { tick: "done" } }, done: {} } });
"""
    inst = local(prepare(bundler, engine, body, 4), executor, transport, clock)
    await inst.create()
    assert inst.timer_keys() == {"tick"}
    await inst.advance_to(clock.now_ms() + 3000, clock.set)
    assert inst.current is not None and inst.current.state == "done"
