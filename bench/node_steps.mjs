#!/usr/bin/env node
// Baseline for bench/runtime_steps.py: the same bundle stepped by the same XState version in node.
//   node bench/node_steps.mjs --bundle <file> --major 4|5 --iterations N
// Prints {"cold": [ms...], "warm": [ms...], "create_event": [ms...]}.
// cold: a fresh vm context + evaluating the bundle + restore, send, persist (like a fresh sandbox);
// warm: restore + send + persist with the bundle already loaded; create_event: start + send + persist.
import fs from "node:fs";
import vm from "node:vm";

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, v, i, a) => (i % 2 ? acc : [...acc, [a[i].slice(2), a[i + 1]]]), []));
const code = fs.readFileSync(args.bundle, "utf8");
const major = Number(args.major);
const iterations = Number(args.iterations || 200);
const clock = { setTimeout: () => 0, clearTimeout() {} };

function load() {
  const sandbox = { console: { log() {}, warn() {}, error() {} }, crypto: globalThis.crypto, AbortController, setTimeout, clearTimeout };
  vm.createContext(sandbox);
  vm.runInContext(code, sandbox);
  return sandbox.__m;
}

function stepFrom(m, persisted, event) {
  if (major === 4) {
    const svc = m.interpret(m.user.default, { clock }).start(persisted ? { ...persisted, actions: [], children: {} } : undefined);
    if (event) svc.send(event);
    return JSON.parse(JSON.stringify(svc.state));
  }
  const actor = m.createActor(m.user.default, { snapshot: persisted || undefined, clock }).start();
  if (event) actor.send(event);
  return JSON.parse(JSON.stringify(actor.getPersistedSnapshot()));
}

const now = () => Number(process.hrtime.bigint()) / 1e6;
const m0 = load();
const persisted = stepFrom(m0, null, null);
const out = { cold: [], warm: [], create_event: [] };
for (let i = 0; i < iterations; i++) {
  let t = now();
  stepFrom(load(), persisted, { type: "toggle" });
  out.cold.push(now() - t);
  t = now();
  stepFrom(m0, persisted, { type: "toggle" });
  out.warm.push(now() - t);
  t = now();
  const created = stepFrom(m0, null, null);
  stepFrom(m0, created, { type: "toggle" });
  out.create_event.push(now() - t);
}
process.stdout.write(JSON.stringify(out));
