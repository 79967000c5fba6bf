// A second client for the dashboard's browser test: the official @statebacked/client sends one
// event to an instance, acting as an end user, and prints the resulting state as one JSON line.
//
// Environment: STATEHOST_URL, ADMIN_TOKEN, ORG_ID, MACHINE, INSTANCE, EVENT, ACT (JSON authContext).

import WebSocket from "ws";
import { StateBackedClient } from "@statebacked/client";
import { describeError, env as sharedEnv } from "./checks.mjs";

const env = (name) => sharedEnv("send_event.mjs", name);

const client = new StateBackedClient(env("ADMIN_TOKEN"), {
  apiHost: env("STATEHOST_URL").replace(/\/$/, ""),
  orgId: env("ORG_ID"),
  actAs: JSON.parse(env("ACT")),
  WebSocket,
});

try {
  const state = await client.machineInstances.sendEvent(env("MACHINE"), env("INSTANCE"), { event: env("EVENT") });
  process.stdout.write(JSON.stringify({ state: state.state, publicContext: state.publicContext }) + "\n");
  process.exit(0);
} catch (e) {
  process.stderr.write(`send_event.mjs: ${describeError(e)}\n`);
  process.exit(1);
}
