"""Persistent child instances and messages between instances (wire-api 7.6), with the real
@statebacked/machine functions in XState 4 machines: a parent spawns three children that are full
instances, sends them work (one message delayed across a server restart), the children report back
with sendParent, their allowWrite checks stateBackedSender, and nothing crosses organisations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client import StatehostClient
from runtime import FakeClock, Upload
from server.engine import DurableEngine
from server.timers import MAX_RETRIES
from tests.server.api_support import Api
from tests.server.conftest import eventually, settings_for

PARENT = b"""import { createMachine, assign } from "xstate";
import { spawnPersistentInstance, sendTo } from "@statebacked/machine";

export const allowRead = () => true;
export const allowWrite = ({ authContext }) =>
  authContext.sub === "owner" || authContext.stateBackedSender?.machineName === "child";

export default createMachine({
  id: "parent",
  predictableActionArguments: true,
  context: { children: [], reports: [] },
  initial: "idle",
  states: {
    idle: {
      on: {
        start: {
          target: "waiting",
          actions: assign({
            children: (_, e) => [1, 2, 3].map((n) =>
              spawnPersistentInstance(
                { machineName: "child", machineInstanceName: `${e.prefix}-${n}` },
                { context: { n }, name: `c${n}` },
              )),
          }),
        },
      },
    },
    waiting: {
      entry: [
        sendTo("c1", { type: "work" }),                          // by the name given at spawn
        sendTo((ctx) => ctx.children[1], { type: "work" }),      // by the reference in the context
        sendTo("c3", { type: "work" }, { delay: 3600000, id: "late-work" }),  // an hour later
      ],
      on: {
        report: { actions: assign({ reports: (ctx, e) => [...ctx.reports, e.n].sort() }) },
      },
      always: { target: "done", cond: (ctx) => ctx.reports.length === 3 },
    },
    done: { type: "final" },
  },
});
"""

CHILD = b"""import { createMachine, sendParent, assign } from "xstate";

export const allowRead = () => true;
// Only the parent machine may create children and send them work.
export const allowWrite = ({ authContext }) => authContext.stateBackedSender?.machineName === "parent";

export default createMachine({
  id: "child",
  predictableActionArguments: true,
  context: { n: 0, from: null },
  initial: "idle",
  states: {
    idle: {
      on: {
        work: {
          target: "reported",
          actions: [
            assign({ from: (_, e) => e.type }),
            sendParent((ctx) => ({ type: "report", n: ctx.n })),
          ],
        },
      },
    },
    reported: {},
  },
});
"""

HOUR = 3_600_000
ACT = {"x-statebacked-act": json.dumps({"sub": "owner"})}


async def _deploy(engine: DurableEngine, org: str) -> None:
    for slug, source in (("parent", PARENT), ("child", CHILD)):
        await engine.store.create_machine(org, slug, [], engine.clock.now_ms())
        await engine.instances.create_version(org, slug, Upload(f"{slug}.ts", source))


async def test_parent_spawns_children_that_report_back_across_a_restart(tmp_path: Path, clock: FakeClock, bundler):
    engine = DurableEngine(settings_for(tmp_path), clock=clock, bundler=bundler)
    await engine.start()
    org = await engine.store.create_org("o", clock.now_ms())
    await _deploy(engine, org)
    await engine.instances.create(org, "parent", "p", auth_context={"sub": "owner"})
    await engine.instances.send_event(org, "parent", "p", {"type": "start", "prefix": "job"}, {"sub": "owner"})

    async def reports() -> list[int]:
        return list((await engine.instances.read(org, "parent", "p", None)).context["reports"])

    child_machine = await engine.store.machine_id(org, "child")

    async def two_reported() -> bool:
        # the third spawn is delivered on its own lane: it may land after the first two reports
        third = await engine.store.find_instance(child_machine, "job-3")
        return await reports() == [1, 2] and third is not None

    await eventually(two_reported)
    for n in (1, 2, 3):  # three full instances, created with the context given at spawn
        child = await engine.instances.read(org, "child", f"job-{n}", None)
        assert child.context["n"] == n and child.state == ("reported" if n < 3 else "idle")
    parent_row = await engine.store.find_instance(await engine.store.machine_id(org, "parent"), "p")
    assert parent_row is not None
    pending = await engine.store.timers_of(parent_row.id)
    assert [(t.key, t.target) for t in pending] == [
        ("late-work", {"machineName": "child", "machineInstanceName": "job-3", "kind": "event"})
    ]
    await engine.stop()

    clock.advance(HOUR)  # the delayed message falls due while the server is down
    engine = DurableEngine(settings_for(tmp_path), clock=clock, bundler=bundler)
    await engine.start()
    try:

        async def all_reported() -> bool:
            state = await engine.instances.read(org, "parent", "p", None)
            return state.state == "done"

        await eventually(all_reported)
        assert await reports() == [1, 2, 3]
        child = await engine.instances.read(org, "child", "job-3", None)
        assert child.state == "reported" and child.context["from"] == "work"
        history = await engine.store.instance_admin.transitions_page(parent_row.id, None)
        events = [t.event["type"] for t in history.rows]
        assert events == ["xstate.init", "start", "report", "report", "report"]
        assert await engine.store.timers_of(parent_row.id) == []  # every message delivered once
    finally:
        await engine.stop()


async def test_allow_write_sees_the_sender_and_refusals_are_logged(durable: DurableEngine, clock: FakeClock):
    org = await durable.store.create_org("o", clock.now_ms())
    await _deploy(durable, org)
    # A child created by anyone else than its parent machine is refused by its allowWrite.
    from server.errors import Rejected

    with pytest.raises(Rejected):
        await durable.instances.create(org, "child", "stray", auth_context={"sub": "owner"})
    # A parent machine whose children refuse its spawn: the refusal is logged for the sender.
    await durable.store.create_machine(org, "rogue", [], clock.now_ms())
    await durable.instances.create_version(
        org, "rogue", Upload("rogue.ts", PARENT.replace(b'id: "parent"', b'id: "rogue"'))
    )
    await durable.instances.create(org, "rogue", "r", auth_context={"sub": "owner"})
    await durable.instances.send_event(org, "rogue", "r", {"type": "start", "prefix": "rogue"}, {"sub": "owner"})

    async def refused() -> bool:
        logs = await durable.store.logs(org, instance_name="r", limit=1000)
        return sum("not delivered" in line["text"] for line in logs) >= 3

    await eventually(refused)
    machine_id = await durable.store.machine_id(org, "child")
    assert await durable.store.find_instance(machine_id, "rogue-1") is None


async def test_nothing_crosses_organisations(durable: DurableEngine, clock: FakeClock):
    mine = await durable.store.create_org("mine", clock.now_ms())
    theirs = await durable.store.create_org("theirs", clock.now_ms())
    await _deploy(durable, theirs)  # the child machine exists only in the other org
    await durable.store.create_machine(mine, "parent", [], clock.now_ms())
    await durable.instances.create_version(mine, "parent", Upload("parent.ts", PARENT))
    await durable.instances.create(mine, "parent", "p", auth_context={"sub": "owner"})
    await durable.instances.send_event(mine, "parent", "p", {"type": "start", "prefix": "x"}, {"sub": "owner"})
    parent = await durable.store.find_instance(await durable.store.machine_id(mine, "parent"), "p")
    assert parent is not None

    async def dropped() -> bool:
        # The machine "child" does not exist in this org: every message is retried, then dropped.
        clock.advance(60_000)
        durable.timers.wake()
        return await durable.store.timers_of(parent.id) == []

    await eventually(dropped, within_s=30)
    logs = [line["text"] for line in await durable.store.logs(mine, instance_name="p", limit=100)]
    assert f"[statehost] spawn of child/x-1 dropped after {MAX_RETRIES + 1} failed deliveries" in logs
    other = await durable.store.machine_id(theirs, "child")
    for n in (1, 2, 3):
        assert await durable.store.find_instance(other, f"x-{n}") is None


async def test_children_are_instances_of_the_api(api: Api, admin: StatehostClient):
    for slug, source in (("parent", PARENT), ("child", CHILD)):
        await admin.machines.create(slug)
        await admin.versions.create(slug, source, filename=f"{slug}.ts", make_current=True)
    await api.call("POST", "/machines/parent", body={"slug": "p"}, headers=api.admin(**ACT))
    status, _ = await api.call(
        "POST",
        "/machines/parent/i/p/events",
        body={"event": {"type": "start", "prefix": "api"}},
        headers=api.admin(**ACT),
    )
    assert status == 200

    async def reported() -> bool:  # each child reports on its own (c3 gets its work an hour later)
        for name in ("api-1", "api-2"):
            try:
                state = await admin.instances.get("child", name)
            except Exception:
                return False
            if state["state"] != "reported":
                return False
        return True

    await eventually(reported)
    listed = {i["slug"] for i in await admin.instances.list("child")}
    assert {"api-1", "api-2", "api-3"} <= listed
    updates = admin.instances.subscribe("child", "api-2")  # and over /rt
    assert (await anext(updates))["state"] == "reported"
    await updates.aclose()


BOSS = b"""import { createMachine, assign } from "xstate";
import { persistentInvocableSource } from "@statebacked/machine";

export const allowRead = () => true;
export const allowWrite = ({ authContext }) =>
  authContext.sub === "owner" || authContext.stateBackedSender?.machineName === "task";

export default createMachine({
  id: "boss",
  predictableActionArguments: true,
  context: { result: null, pokes: 0 },
  initial: "idle",
  states: {
    idle: { on: { go: "running" } },
    running: {
      invoke: {
        id: "job",
        src: persistentInvocableSource({ machineName: "task", machineInstanceName: "task-1" }),
        data: (ctx, e) => ({ size: e.size }),
        onDone: { target: "finished", actions: assign({ result: (_, e) => e.data }) },
        onError: "failed",
      },
      on: { poke: { actions: assign({ pokes: (ctx) => ctx.pokes + 1 }) } },
    },
    finished: {},
    failed: {},
  },
});
"""

TASK = b"""import { createMachine } from "xstate";

export const allowRead = () => true;
export const allowWrite = ({ authContext }) =>
  authContext.stateBackedSender?.machineName === "boss" || authContext.sub === "worker";

export default createMachine({
  id: "task",
  predictableActionArguments: true,
  context: { size: 0 },
  initial: "todo",
  states: {
    todo: { on: { finish: "done" } },
    done: { type: "final", data: (ctx) => ({ doubled: ctx.size * 2 }) },
  },
});
"""


async def test_persistent_invocation_reports_its_output_with_done_invoke(durable: DurableEngine, clock: FakeClock):
    org = await durable.store.create_org("o", clock.now_ms())
    for slug, source in (("boss", BOSS), ("task", TASK)):
        await durable.store.create_machine(org, slug, [], clock.now_ms())
        await durable.instances.create_version(org, slug, Upload(f"{slug}.ts", source))
    await durable.instances.create(org, "boss", "b", auth_context={"sub": "owner"})
    state = await durable.instances.send_event(org, "boss", "b", {"type": "go", "size": 3}, {"sub": "owner"})
    assert state.state == "running"  # the window does not wait for the persistent child

    async def created() -> bool:
        machine_id = await durable.store.machine_id(org, "task")
        return await durable.store.find_instance(machine_id, "task-1") is not None

    await eventually(created)
    assert (await durable.instances.read(org, "task", "task-1", None)).context == {"size": 3}  # from `data`
    # The invocation is not a service of the boss's window: its next event gets no cut-off error.
    poked = await durable.instances.send_event(org, "boss", "b", "poke", {"sub": "owner"})
    assert poked.state == "running" and poked.context["pokes"] == 1
    await durable.instances.send_event(org, "task", "task-1", "finish", {"sub": "worker"})

    async def finished() -> bool:
        return (await durable.instances.read(org, "boss", "b", None)).state == "finished"

    await eventually(finished)
    assert (await durable.instances.read(org, "boss", "b", None)).context["result"] == {"doubled": 6}


PARENT_V5 = b"""import { createMachine, assign, sendTo } from "npm:xstate@5";
import { spawnPersistentInstance } from "@statebacked/machine";

export const allowRead = () => true;
export const allowWrite = ({ authContext }) =>
  authContext.sub === "owner" || authContext.stateBackedSender?.machineName === "child5";

export default createMachine({
  id: "parent5",
  context: { kids: [], reports: [] },
  initial: "idle",
  states: {
    idle: {
      on: {
        start: {
          target: "waiting",
          actions: [
            assign({
              kids: () => [1, 2].map((n) =>
                spawnPersistentInstance({ machineName: "child5", machineInstanceName: `k-${n}` }, { context: { n } })),
            }),
            sendTo(({ context }) => context.kids[0], { type: "work" }),
            sendTo(({ context }) => context.kids[1], { type: "work" }, { delay: 60000 }),
          ],
        },
      },
    },
    waiting: {
      on: { report: { actions: assign({ reports: ({ context, event }) => [...context.reports, event.n] }) } },
    },
  },
});
"""

CHILD_V5 = b"""import { createMachine, assign, sendParent } from "npm:xstate@5";

export const allowRead = () => true;
export const allowWrite = ({ authContext }) => authContext.stateBackedSender?.machineName === "parent5";

export default createMachine({
  id: "child5",
  context: ({ input }) => ({ n: input?.n ?? 0 }),
  initial: "idle",
  states: {
    idle: { on: { work: { target: "done", actions: sendParent(({ context }) => ({ type: "report", n: context.n })) } } },
    done: { type: "final" },
  },
});
"""


async def test_xstate5_sends_to_persistent_instances_and_children_send_to_their_parent(
    durable: DurableEngine, clock: FakeClock
):
    org = await durable.store.create_org("o", clock.now_ms())
    for slug, source in (("parent5", PARENT_V5), ("child5", CHILD_V5)):
        await durable.store.create_machine(org, slug, [], clock.now_ms())
        await durable.instances.create_version(org, slug, Upload(f"{slug}.ts", source))
    await durable.instances.create(org, "parent5", "p", auth_context={"sub": "owner"})
    await durable.instances.send_event(org, "parent5", "p", "start", {"sub": "owner"})

    async def reports(expected: list[int]) -> bool:
        return list((await durable.instances.read(org, "parent5", "p", None)).context["reports"]) == expected

    await eventually(lambda: reports([1]))
    clock.advance(60_000)
    durable.timers.wake()
    await eventually(lambda: reports([1, 2]))
    for n in (1, 2):
        child = await durable.instances.read(org, "child5", f"k-{n}", None)
        assert child.done and child.context == {"n": n}


async def test_a_machine_cannot_flood_the_database_with_spawns(durable: DurableEngine, clock: FakeClock):
    org = await durable.store.create_org("o", clock.now_ms())
    flood = PARENT.replace(b"[1, 2, 3].map", b"Array.from({ length: 1001 }, (_, i) => i + 1).map")
    await durable.store.create_machine(org, "parent", [], clock.now_ms())
    await durable.instances.create_version(org, "parent", Upload("parent.ts", flood))
    await durable.instances.create(org, "parent", "p", auth_context={"sub": "owner"})
    from server.errors import MachineError

    with pytest.raises(MachineError, match="max_timer_ops") as refused:
        await durable.instances.send_event(org, "parent", "p", {"type": "start", "prefix": "f"}, {"sub": "owner"})
    assert refused.value.extra.get("limit") == "max_timer_ops"
    parent = await durable.store.find_instance(await durable.store.machine_id(org, "parent"), "p")
    assert parent is not None and parent.state == "idle"
    assert await durable.store.timers_of(parent.id) == []  # nothing of the failed round was stored
