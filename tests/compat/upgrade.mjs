// An instance upgraded by smply (migrations create + instances set-desired-version), observed with
// the official @statebacked/client: a subscriber receives the statebacked.upgrade transition, then
// the event's transition under the new version; the history lists both.
//
// Environment: STATEHOST_URL, ADMIN_TOKEN, ORG_ID, MACHINE, INSTANCE, FROM_VERSION, TO_VERSION,
// MIGRATION_ID. One JSON line per passed check (checks.mjs).

import WebSocket from "ws";
import { StateBackedClient } from "@statebacked/client";
import { assert, env as sharedEnv, runCheck } from "./checks.mjs";

const env = (name) => sharedEnv("upgrade.mjs", name);
const check = (name, fn) => runCheck("upgrade.mjs", name, fn, 30_000);
const MACHINE = env("MACHINE");
const INSTANCE = env("INSTANCE");

const client = new StateBackedClient(env("ADMIN_TOKEN"), {
  apiHost: env("STATEHOST_URL").replace(/\/$/, ""),
  orgId: env("ORG_ID"),
  actAs: { sub: "compat" },
  WebSocket,
});

const updates = [];
let wake = () => {};
const reach = (count) =>
  new Promise((resolve) => {
    wake = () => updates.length >= count && resolve();
    wake();
  });
let unsubscribe;

await check("subscribed-before-the-upgrade", async () => {
  unsubscribe = client.machineInstances.subscribe(MACHINE, INSTANCE, (state) => {
    updates.push(state);
    wake();
  });
  await reach(1);
  assert(updates[0].state === "active", "the instance should still be on version 1 (active)", updates[0]);
  return { state: updates[0].state };
});

await check("event-delivered-under-the-new-version", async () => {
  const state = await client.machineInstances.sendEvent(MACHINE, INSTANCE, { event: "toggle" });
  assert(state.state === "off", "the event should run under version 2 (on -> off)", state);
  assert(JSON.stringify(state.publicContext) === JSON.stringify({ flips: 1 }), "upgradeContext's context", state);
  return { state: state.state, publicContext: state.publicContext };
});

await check("subscriber-saw-the-upgrade-then-the-event", async () => {
  await reach(3);
  unsubscribe();
  const states = updates.map((u) => u.state);
  assert(JSON.stringify(states) === JSON.stringify(["active", "on", "off"]), "updates in order", states);
  assert(updates[1].ts < updates[2].ts, "ts increases", updates.map((u) => u.ts));
  return { states };
});

await check("history-lists-the-upgrade", async () => {
  const page = await client.machineInstances.listTransitions(MACHINE, INSTANCE);
  const events = page.transitions.map((t) => t.event);
  const upgrade = events[events.length - 2];
  const expected = {
    type: "statebacked.upgrade",
    fromMachineVersionId: env("FROM_VERSION"),
    toMachineVersionId: env("TO_VERSION"),
    migrationPath: [env("MIGRATION_ID")],
  };
  assert(JSON.stringify(upgrade) === JSON.stringify(expected), "the upgrade transition's event", { upgrade, expected });
  assert(events[events.length - 1].type === "toggle", "then the event", events);
  return { events: events.map((e) => e.type) };
});

process.exit(0);
