#!/usr/bin/env node
// Real-time subscriptions (WebSocket /rt, wire-api §4) and logs.watch (wire-api §5) through the
// OFFICIAL, unmodified @statebacked/client 0.1.37 and @statebacked/token 0.2.0, against a running
// statehost server. Driven by test_realtime.py, which first deploys realtime.ts with smply:
//
//   STATEHOST_URL=http://127.0.0.1:PORT ORG_ID=org_… ADMIN_TOKEN=… MACHINE=rt \
//   KEY_ID=sbk_… KEY_SECRET=sbsec_… [INSTANCE=…] [RESTART_SIGNAL_FILE=…] node tests/compat/realtime.mjs
//
// Optional: INSTANCE (default rt-<random>; created with getOrCreate if missing), RUN_ID (suffix of
// the default instance and of the probe instances), RESTART_SIGNAL_FILE (enables the reconnection
// check, see below), CHECK_TIMEOUT_MS (per check, default 60000), RESTART_TIMEOUT_MS (how long to
// wait for the driver to restart the server, default 120000).
//
// Output: one JSON line per passed check, {"check": "<name>", "ok": true, ...details}, and a final
// {"check": "all", "ok": true, "checks": N, "restart": bool, "instance": "…"}. On the first failure:
// {"check": "<name>", "ok": false, "error": "..."} on stdout, a message on stderr, exit 1.
// Exit 2: bad environment.
//
// Reconnection, two checks:
// - reconnect-after-drop (always): the client-side sockets are terminated while the server stays up;
//   the client reconnects by itself (same URL, same token), re-sends the same subscribe, gets the
//   current state again, and live updates continue.
// - server-restart (only when RESTART_SIGNAL_FILE is set): the script writes "restart" into the file
//   and waits; the driver stops the server, starts it again on the same port and data dir and writes
//   "restarted". Client 0.1.37 makes exactly ONE immediate reconnect attempt and never retries once
//   that attempt fails (see the check), so the old subscribers cannot survive the gap between the two
//   processes: they are reported, not required; a new client with the same token must get the
//   persisted state and live updates from the restarted server.
//
// Client APIs used (read in node_modules/@statebacked/client/esm/src/index.js, 0.1.37):
// - new StateBackedClient(token, {apiHost, WebSocket, fetch, orgId}): `WebSocket` is the constructor
//   the client instantiates as `new WS(url)` (Node 20 has no global WebSocket); `fetch` replaces its
//   fetch (default: the `undici` package's).
// - machineInstances.subscribe(machineName, instanceName, onStateUpdate, onError?, signal?) returns
//   an unsubscribe function (synchronously). onStateUpdate(state) receives
//   {state, publicContext, done, tags, ts, states}, rebuilt field by field from the frame (so a
//   leaked `context` would not reach it: the raw frames are checked here instead). A server `error`
//   frame for the subscription's requestId reaches onError(adaptError(status, code)) -
//   errors.RejectedByMachineAuthorizerError, errors.NotFoundError, errors.MissingUserError, … -
//   and the subscription stays registered (it is re-sent on reconnect) until unsubscribed.
// - logs.watch(from: Date, {machineName, instanceName, machineVersionId, to}?, signal?) returns an
//   async iterable of log entries; aborting the signal ends it without an error.
//
// The ReconnectingWebSocket of the client sets onopen/onmessage/onclose but NO error handler, and on
// a close it reconnects once, immediately. With the `ws` package an 'error' event without a listener
// is thrown as an uncaught exception (a refused reconnect - ECONNREFUSED while the server restarts -
// kills the process), so the WebSocket passed here is a `ws` subclass that adds an error listener
// (the only behavioural difference from `WebSocket: (await import("ws")).default`) and records the
// frames in both directions.

import crypto from "node:crypto";
import fs from "node:fs";

import WebSocket from "ws";
import { StateBackedClient, errors } from "@statebacked/client";
import { signToken } from "@statebacked/token";
import { CheckFailure, assert, describeError, emit, env as sharedEnv, passedCount, runCheck } from "./checks.mjs";

// ---------------------------------------------------------------------------------------------
// Environment

const env = (name, fallback) => sharedEnv("realtime", name, fallback);

const API_HOST = env("STATEHOST_URL").replace(/\/+$/, "");
const ORG_ID = env("ORG_ID");
const ADMIN_TOKEN = env("ADMIN_TOKEN");
const MACHINE = env("MACHINE");
const KEY_ID = env("KEY_ID");
const KEY_SECRET = env("KEY_SECRET");
const RUN = env("RUN_ID", crypto.randomBytes(4).toString("hex"));
const INSTANCE = env("INSTANCE", `rt-${RUN}`);
const RESTART_SIGNAL_FILE = env("RESTART_SIGNAL_FILE", "");
const CHECK_TIMEOUT_MS = Number(env("CHECK_TIMEOUT_MS", "60000"));
const RESTART_TIMEOUT_MS = Number(env("RESTART_TIMEOUT_MS", "120000"));

// Must match realtime.ts (private context that must never reach a subscriber).
const SECRET = "statehost-rt-private-secret-5f0c1e";
const TIMER_MS = 1500;
const STARTED_AT = Date.now();

// ---------------------------------------------------------------------------------------------
// Reporting (same conventions as quickstart.mjs)

async function check(name, fn, timeoutMs = CHECK_TIMEOUT_MS) {
  return runCheck("realtime", name, fn, timeoutMs);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `pred` every 20 ms until it holds; fails with `what` and `details()` after `ms`. */
async function waitFor(pred, what, details = () => undefined, ms = CHECK_TIMEOUT_MS) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new CheckFailure(`timed out waiting for ${what}`, details());
    await sleep(20);
  }
}

const sameJson = (a, b) => JSON.stringify(sortKeys(a)) === JSON.stringify(sortKeys(b));
function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  return v;
}

const brief = (s) => ({ ts: s.ts, state: s.state, publicContext: s.publicContext });

// ---------------------------------------------------------------------------------------------
// WebSocket implementation handed to the client: `ws`, plus an error listener, plus recording.

function recordingWebSocket(label) {
  const rec = { label, attempts: 0, opened: 0, closes: 0, closeCodes: [], lastError: undefined, urls: [], frames: [], sent: [], current: undefined };
  class RecordingWebSocket extends WebSocket {
    constructor(url, ...rest) {
      super(url, ...rest);
      rec.attempts += 1;
      const conn = rec.attempts;
      this.conn = conn;
      rec.urls.push(String(url));
      // Registered before the client's own handlers (it assigns onopen/onmessage/onclose after
      // construction), so these run first.
      this.on("error", (e) => {
        rec.lastError = e?.code ?? e?.message ?? String(e);
      });
      this.on("open", () => {
        rec.opened += 1;
        rec.lastOpenConn = conn;
        rec.current = this;
      });
      this.on("close", (code) => {
        rec.closes += 1;
        rec.closeCodes.push(code);
      });
      this.on("message", (data, isBinary) => {
        const text = isBinary ? null : data.toString("utf8");
        rec.frames.push({ conn, at: Date.now(), text, msg: parseJson(text) });
      });
    }
    send(data, ...rest) {
      rec.sent.push({ conn: this.conn, at: Date.now(), msg: parseJson(String(data)) });
      return super.send(data, ...rest);
    }
  }
  return { WS: RecordingWebSocket, rec };
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Clients

const opts = { apiHost: API_HOST };
const keyToken = (sub) =>
  signToken({ stateBackedKeyId: KEY_ID, stateBackedSecretKey: KEY_SECRET }, { sub }, { expires: { in: "1h" } });

async function keyClient(sub) {
  const ws = recordingWebSocket(sub);
  const token = await keyToken(sub);
  const client = new StateBackedClient(token, { ...opts, WebSocket: ws.WS });
  return { sub, client, rec: ws.rec, token };
}

/** Subscribes with the official API and records what the callbacks receive. */
function subscribe(who, instance = INSTANCE) {
  const s = { who: who.sub, instance, rec: who.rec, updates: [], errors: [] };
  s.unsubscribe = who.client.machineInstances.subscribe(
    MACHINE,
    instance,
    (state) => s.updates.push({ at: Date.now(), conn: who.rec.lastOpenConn, state }),
    (err) => s.errors.push({ at: Date.now(), err }),
  );
  assert(typeof s.unsubscribe === "function", "subscribe must return an unsubscribe function", typeof s.unsubscribe);
  return s;
}

const tsList = (updates) => updates.map((u) => u.state.ts);

// Log lines the machine must have written, in order: {line, outputType}.
const expectedLogs = [];
const logBump = (s) => expectedLogs.push({ line: `bump ${s.publicContext.count}`, outputType: "stdout" });

const extraSubscribers = []; // {s, who}: subscribers created along the way, checked with the others
const alice = await keyClient("alice");
const bob = await keyClient("bob");
let subA;
let subB;
let current; // the last committed state as far as this script knows

// ---------------------------------------------------------------------------------------------
// Checks

await check("instance-ready", async () => {
  const s = await alice.client.machineInstances.getOrCreate(MACHINE, INSTANCE, {});
  assert(s && typeof s.ts === "number" && s.state === "idle", "the rt instance must exist and be idle", s);
  assert(typeof s.publicContext?.count === "number" && typeof s.publicContext?.ticks === "number", "publicContext must have count and ticks", s);
  assert(!("context" in s) && !JSON.stringify(s).includes(SECRET), "GET must not expose the private context", s);
  current = s;
  return { instance: INSTANCE, state: brief(s) };
});

await check("subscribe-initial-state", async () => {
  subA = subscribe(alice);
  subB = subscribe(bob);
  await waitFor(
    () => subA.updates.length > 0 && subB.updates.length > 0,
    "the current state right after subscribe (both subscribers)",
    () => ({ alice: subA, bob: subB, frames: { alice: alice.rec.frames, bob: bob.rec.frames } }),
  );
  for (const s of [subA, subB]) {
    assert(s.errors.length === 0, `${s.who}: unexpected subscription error`, s.errors.map((e) => describeError(e.err)));
    const first = s.updates[0].state;
    assert(first.ts === current.ts && sameJson(first.publicContext, current.publicContext) && first.state === current.state, `${s.who}: the first update must be the current state`, { first, current });
    assert(Array.isArray(first.states) && Array.isArray(first.tags) && typeof first.done === "boolean", `${s.who}: update shape`, first);
  }
  const url = new URL(alice.rec.urls[0]);
  assert(url.pathname === new URL(API_HOST).pathname.replace(/\/$/, "") + "/rt" && url.searchParams.get("token"), "socket URL", alice.rec.urls[0]);
  return { initial: brief(subA.updates[0].state), socketPath: url.pathname, sockets: { alice: alice.rec.opened, bob: bob.rec.opened } };
});

await check("events-fan-out", async () => {
  // Each client sends one event over HTTP; both subscribers must see both transitions, in order.
  const r1 = await alice.client.machineInstances.sendEvent(MACHINE, INSTANCE, { event: "bump" });
  logBump(r1);
  const r2 = await bob.client.machineInstances.sendEvent(MACHINE, INSTANCE, { event: { type: "bump" } });
  logBump(r2);
  assert(r1.publicContext.count === current.publicContext.count + 1 && r2.publicContext.count === r1.publicContext.count + 1, "bump must increment count", { current, r1, r2 });
  assert(r1.ts > current.ts && r2.ts > r1.ts, "ts must increase with each transition", { current: current.ts, r1: r1.ts, r2: r2.ts });
  for (const s of [subA, subB]) {
    await waitFor(() => s.updates.some((u) => u.state.ts === r2.ts), `${s.who} to see the second bump`, () => s.updates.map((u) => brief(u.state)));
  }
  await sleep(200); // let any stray duplicate arrive
  for (const s of [subA, subB]) {
    const after = s.updates.slice(1).map((u) => u.state);
    assert(sameJson(after.map((u) => u.ts), [r1.ts, r2.ts]), `${s.who}: exactly one update per transition, in order`, { got: after.map(brief), want: [brief(r1), brief(r2)] });
    assert(sameJson(after[0].publicContext, r1.publicContext) && sameJson(after[1].publicContext, r2.publicContext), `${s.who}: updates must carry the committed publicContext`, { got: after.map(brief), want: [brief(r1), brief(r2)] });
  }
  current = r2;
  return { alice: tsList(subA.updates), bob: tsList(subB.updates), counts: [r1.publicContext.count, r2.publicContext.count] };
});

await check("timer-fan-out", async () => {
  // `start` enters `ticking`; its `after: {1500: "idle"}` fires with no client event at all.
  const before = { alice: subA.updates.length, bob: subB.updates.length };
  const sentAt = Date.now();
  const r3 = await alice.client.machineInstances.sendEvent(MACHINE, INSTANCE, { event: "start" });
  assert(r3.state === "ticking" && r3.ts > current.ts, "start must enter ticking", r3);
  expectedLogs.push({ line: `ticking ${r3.publicContext.ticks + 1}`, outputType: "stdout" });
  const isTimer = (u) => u.state.state === "idle" && u.state.ts > r3.ts;
  for (const s of [subA, subB]) {
    await waitFor(() => s.updates.some(isTimer), `${s.who} to see the delayed transition back to idle`, () => s.updates.map((u) => brief(u.state)), TIMER_MS + 30000);
  }
  await sleep(200);
  const seen = {};
  for (const s of [subA, subB]) {
    const after = s.updates.slice(before[s.who]);
    assert(after.length === 2 && after[0].state.ts === r3.ts && after[0].state.state === "ticking" && isTimer(after[1]), `${s.who}: expected [ticking (the start response), idle (the timer)]`, after.map((u) => brief(u.state)));
    const t = after[1];
    assert(t.state.publicContext.ticks === r3.publicContext.ticks + 1 && t.state.publicContext.count === r3.publicContext.count, `${s.who}: the timer transition increments ticks`, brief(t.state));
    assert(t.at - sentAt >= TIMER_MS - 50, `${s.who}: the timer fired too early (${t.at - sentAt} ms after start)`, brief(t.state));
    seen[s.who] = { ts: t.state.ts, afterMs: t.at - sentAt };
  }
  assert(seen.alice.ts === seen.bob.ts, "both subscribers must see the same timer transition", seen);
  const g = await bob.client.machineInstances.get(MACHINE, INSTANCE);
  const timerState = subA.updates[subA.updates.length - 1].state;
  assert(g.ts === timerState.ts && g.state === "idle" && sameJson(g.publicContext, timerState.publicContext), "GET must agree with the pushed timer update", { get: brief(g), pushed: brief(timerState) });
  expectedLogs.push({ line: `tick done ${g.publicContext.ticks}`, outputType: "stderr" });
  current = g;
  return { start: brief(r3), timer: brief(timerState), delivered: seen };
});

await check("blocked-subscriber", async () => {
  // allowRead rejects sub "blocked": the subscription error reaches onError as the client's error class.
  const blocked = await keyClient("blocked");
  const s = subscribe(blocked);
  await waitFor(() => s.errors.length > 0, "the subscription error for sub blocked", () => ({ updates: s.updates, frames: blocked.rec.frames }));
  await sleep(300);
  const e = s.errors[0].err;
  s.unsubscribe();
  assert(e instanceof errors.RejectedByMachineAuthorizerError && e.status === 403 && e.code === "rejected-by-machine-authorizer", "expected RejectedByMachineAuthorizerError (403 rejected-by-machine-authorizer)", describeError(e));
  assert(s.updates.length === 0, "a subscriber rejected by allowRead must get no state", s.updates.map((u) => brief(u.state)));
  const errFrames = blocked.rec.frames.filter((f) => f.msg?.type === "error");
  assert(errFrames.length >= 1 && typeof errFrames[0].msg.requestId === "string", "error frame with the subscription's requestId", blocked.rec.frames);
  assert(!blocked.rec.frames.some((f) => f.msg?.type === "instance-update"), "no instance-update frame for a rejected subscriber", blocked.rec.frames);
  return { error: e.name, status: e.status, code: e.code, frame: errFrames[0].msg };
});

await check("missing-instance-subscriber", async () => {
  const carol = await keyClient("carol");
  const s = subscribe(carol, `missing-${RUN}`);
  await waitFor(() => s.errors.length > 0, "the subscription error for a missing instance", () => ({ updates: s.updates, frames: carol.rec.frames }));
  const e = s.errors[0].err;
  s.unsubscribe();
  assert(e instanceof errors.NotFoundError && e.status === 404, "expected NotFoundError (404)", describeError(e));
  assert(s.updates.length === 0, "no state for a missing instance", s.updates);
  return { error: e.name, status: e.status, code: e.code };
});

await check("invalid-token-subscriber", async () => {
  // An invalid token must not refuse the upgrade: the socket opens, and each subscribe gets
  // 403 missing-user. (With a refused upgrade, client 0.1.37 would retry once and then wait forever:
  // onError would never fire.)
  const ws = recordingWebSocket("invalid");
  const c = new StateBackedClient("not-a-valid.jwt-token.at-all", { ...opts, WebSocket: ws.WS });
  const s = subscribe({ sub: "invalid", client: c, rec: ws.rec });
  await waitFor(() => s.errors.length > 0, "the subscription error for an invalid token", () => ({ rec: { ...ws.rec } }));
  await sleep(500);
  const e = s.errors[0].err;
  const attempts = ws.rec.attempts;
  s.unsubscribe();
  assert(e instanceof errors.MissingUserError && e.status === 403 && e.code === "missing-user", "expected MissingUserError (403 missing-user)", describeError(e));
  assert(ws.rec.opened >= 1, "the upgrade must be accepted", ws.rec);
  assert(attempts <= 2, `the socket must stay open (the client made ${attempts} connection attempts)`, { attempts, lastError: ws.rec.lastError });
  return { error: e.name, status: e.status, code: e.code, connectionAttempts: attempts };
});

/** Waits for `s` to be back on a new connection with the current state; returns what it saw. */
async function awaitResubscribed(s, who, b) {
  await waitFor(
    () => who.rec.opened > b.opened && s.updates.slice(b.updates).some((u) => u.conn > b.conn),
    `${s.who} to reconnect and receive the current state again`,
    () => ({ before: b, attempts: who.rec.attempts, opened: who.rec.opened, lastError: who.rec.lastError, updates: s.updates.slice(b.updates).map((u) => ({ conn: u.conn, ...brief(u.state) })) }),
  );
  const snap = s.updates.slice(b.updates).find((u) => u.conn > b.conn).state;
  assert(snap.ts === current.ts && sameJson(snap.publicContext, current.publicContext) && snap.state === current.state, `${s.who}: the state after re-subscribing must be the last committed state`, { got: brief(snap), want: brief(current) });
  assert(s.errors.length === 0, `${s.who}: subscription error after reconnecting`, s.errors.map((e) => describeError(e.err)));
  return snap;
}

/** The subscribe requestIds `who` sent on connection `conn` (from its outgoing frames). */
const subscribeIds = (who, conn) => who.rec.sent.filter((f) => f.conn === conn && f.msg?.type === "subscribe-to-instance").map((f) => f.msg.requestId);

/** Sends a bump over HTTP and requires each of `subs` to get exactly that one update. */
async function bumpReaches(sender, subs) {
  const marks = subs.map((s) => s.updates.length);
  const r = await sender.client.machineInstances.sendEvent(MACHINE, INSTANCE, { event: "bump" });
  logBump(r);
  assert(r.ts > current.ts && r.publicContext.count === current.publicContext.count + 1, "bump", { r: brief(r), current: brief(current) });
  for (const s of subs) {
    await waitFor(() => s.updates.some((u) => u.state.ts === r.ts), `${s.who} to see the bump`, () => s.updates.slice(-5).map((u) => brief(u.state)));
  }
  await sleep(200);
  subs.forEach((s, i) => {
    const after = s.updates.slice(marks[i]).map((u) => u.state);
    assert(after.length === 1 && after[0].ts === r.ts && sameJson(after[0].publicContext, r.publicContext), `${s.who}: exactly the one new update`, after.map(brief));
  });
  current = r;
  return r;
}

const mark = (pairs) =>
  Object.fromEntries(pairs.map(([s, who]) => [s.who, { attempts: who.rec.attempts, opened: who.rec.opened, closes: who.rec.closes, conn: who.rec.lastOpenConn, updates: s.updates.length }]));

await check("reconnect-after-drop", async () => {
  // The connection drops while the server stays up (the client-side socket is terminated, as a
  // network failure would): the client reconnects by itself to the same URL (same token),
  // re-sends its subscribe messages with the same requestIds, gets the current state again, and
  // live updates continue.
  const pairs = [[subA, alice], [subB, bob]];
  const before = mark(pairs);
  for (const [, who] of pairs) who.rec.current.terminate();
  const out = {};
  for (const [s, who] of pairs) {
    const b = before[s.who];
    await awaitResubscribed(s, who, b);
    const oldIds = subscribeIds(who, b.conn);
    const newIds = subscribeIds(who, who.rec.lastOpenConn);
    assert(oldIds.length === 1 && sameJson(oldIds, newIds), `${s.who}: the client must re-send the same subscribe`, { oldIds, newIds });
    assert(who.rec.urls[who.rec.urls.length - 1] === who.rec.urls[0], `${s.who}: the client must reconnect to the same URL (same token)`, who.rec.urls);
    out[s.who] = { connectionAttempts: who.rec.attempts - b.attempts, requestId: newIds[0] };
  }
  const r = await bumpReaches(bob, [subA, subB]);
  return { reconnected: out, update: brief(r) };
});

let restarted = false;
if (RESTART_SIGNAL_FILE) {
  await check(
    "server-restart",
    async () => {
      // The driver stops the server and starts it again on the same port and data dir.
      //
      // Client 0.1.37 reconnects exactly ONCE: its ReconnectingWebSocket.connect() returns early while
      // its state is "connecting", and only onopen resets that state; so when the single immediate
      // reconnect attempt is refused (nothing listens between the two processes) the socket stays
      // dead for the life of the client object (later subscribes on it queue forever). The old
      // subscribers are therefore only reported here, not required to recover; a NEW client with the
      // same token must see the persisted state and live updates on the restarted server.
      const pairs = [[subA, alice], [subB, bob]];
      const before = mark(pairs);
      const readSignal = () => {
        try {
          return fs.readFileSync(RESTART_SIGNAL_FILE, "utf8").trim();
        } catch {
          return "";
        }
      };
      fs.writeFileSync(RESTART_SIGNAL_FILE, "restart");
      const askedAt = Date.now();
      await waitFor(() => readSignal() === "restarted", 'the driver to write "restarted"', () => ({ signal: readSignal() }), RESTART_TIMEOUT_MS);
      const waitedForDriverMs = Date.now() - askedAt;
      // Give the old clients a chance to come back (they do not, with 0.1.37).
      await sleep(1500);
      const old = {};
      for (const [s, who] of pairs) {
        const b = before[s.who];
        const reopened = who.rec.opened > b.opened;
        const closeCode = who.rec.closeCodes[b.closes]; // the live socket's close (later ones: refused reconnects)
        old[s.who] = { closeCode, reopened, connectionAttempts: who.rec.attempts - b.attempts, lastError: who.rec.lastError };
        assert(closeCode !== undefined, `${s.who}: the server restart must have closed the socket`, old[s.who]);
        // wire-api 4.5: on shutdown the server closes its sockets with a code (1006 = no close frame).
        assert(closeCode !== 1006, `${s.who}: the stopping server must close the socket with a close frame (got 1006)`, old[s.who]);
        if (reopened) await awaitResubscribed(s, who, b); // a client that does retry must be served
      }
      // HTTP on the restarted server (retry: a stale keep-alive connection to the old process).
      let g;
      for (let i = 0; ; i += 1) {
        try {
          g = await bob.client.machineInstances.get(MACHINE, INSTANCE);
          break;
        } catch (e) {
          if (i >= 20 || e instanceof errors.ApiError) throw e;
          await sleep(250);
        }
      }
      assert(g.ts === current.ts && sameJson(g.publicContext, current.publicContext), "the restarted server must serve the persisted state", { get: brief(g), want: brief(current) });
      // A new client, with alice's very token, subscribes to the restarted server.
      const ws = recordingWebSocket("alice-after-restart");
      const fresh = { sub: "alice-after-restart", client: new StateBackedClient(alice.token, { ...opts, WebSocket: ws.WS }), rec: ws.rec, token: alice.token };
      const subF = subscribe(fresh);
      await waitFor(() => subF.updates.length > 0 || subF.errors.length > 0, "the current state for a new subscriber after the restart", () => ({ rec: ws.rec }));
      assert(subF.errors.length === 0, "subscription error after the restart", subF.errors.map((e) => describeError(e.err)));
      const snap = subF.updates[0].state;
      assert(snap.ts === current.ts && sameJson(snap.publicContext, current.publicContext), "the first update after the restart must be the persisted state", { got: brief(snap), want: brief(current) });
      const live = [subF, ...pairs.filter(([s]) => old[s.who].reopened).map(([s]) => s)];
      const r = await bumpReaches(bob, live);
      extraSubscribers.push({ s: subF, who: fresh });
      return { waitedForDriverMs, oldClients: old, newSubscriber: brief(snap), update: brief(r), liveSubscribers: live.map((s) => s.who) };
    },
    RESTART_TIMEOUT_MS + CHECK_TIMEOUT_MS,
  );
  restarted = true;
}

await check("frames-public-context-only", async () => {
  // The client rebuilds the state from chosen frame fields, so leaks are only visible in raw frames.
  const allowed = new Set(["type", "machineName", "machineInstanceName", "ts", "state", "publicContext", "tags", "done"]);
  let updates = 0;
  const subscribers = [{ s: subA, who: alice }, { s: subB, who: bob }, ...extraSubscribers];
  for (const { who } of subscribers) {
    for (const f of who.rec.frames) {
      assert(f.text !== null && f.msg !== undefined, `${who.sub}: every frame must be text JSON`, f);
      assert(!f.text.includes(SECRET), `${who.sub}: a frame leaked the private context`, f.text);
      if (f.msg.type !== "instance-update") continue;
      updates += 1;
      const keys = Object.keys(f.msg);
      assert(keys.every((k) => allowed.has(k)) && [...allowed].every((k) => keys.includes(k)), `${who.sub}: instance-update fields must be exactly ${[...allowed].join(", ")}`, f.msg);
      assert(f.msg.machineName === MACHINE && f.msg.machineInstanceName === INSTANCE, "instance-update routing fields", f.msg);
      assert(sameJson(Object.keys(f.msg.publicContext).sort(), ["count", "ticks"]), "publicContext must be the public part only", f.msg);
    }
    const ts = who.rec.frames.filter((f) => f.msg?.type === "instance-update").map((f) => f.msg.ts);
    assert(ts.every((t, i) => i === 0 || t >= ts[i - 1]), `${who.sub}: ts must never go backwards`, ts);
  }
  for (const { s } of subscribers) {
    for (const u of s.updates) {
      assert(sameJson(Object.keys(u.state).sort(), ["done", "publicContext", "state", "states", "tags", "ts"]), "callback state shape", u.state);
    }
  }
  return { instanceUpdateFrames: updates, callbacks: Object.fromEntries(subscribers.map(({ s }) => [s.who, s.updates.length])) };
});

// --- logs.watch ---------------------------------------------------------------------------------

const logRequests = [];
const baseFetch = globalThis.fetch.bind(globalThis);
async function countingFetch(url, init) {
  const u = new URL(String(url));
  const entry = { at: Date.now(), path: u.pathname, from: u.searchParams.get("from") };
  logRequests.push(entry);
  const res = await baseFetch(url, init);
  if (u.pathname.endsWith("/logs") && res.ok) {
    try {
      const body = await res.clone().json();
      entry.maxTimestamp = body.maxTimestamp;
      entry.count = Array.isArray(body.logs) ? body.logs.length : undefined;
    } catch (e) {
      entry.bodyError = describeError(e);
    }
  }
  return res;
}

const ISO_MS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

await check(
  "logs-watch",
  async () => {
    const admin = new StateBackedClient(ADMIN_TOKEN, { ...opts, orgId: ORG_ID, fetch: countingFetch });
    const ac = new AbortController();
    const watchStart = Date.now();
    const from = new Date(STARTED_AT - 10 * 60 * 1000);
    const iterable = admin.logs.watch(from, { machineName: MACHINE, instanceName: INSTANCE }, ac.signal);
    const entries = [];
    let watchError;
    let ended = false;
    const consumer = (async () => {
      try {
        for await (const e of iterable) entries.push({ at: Date.now(), e });
      } catch (e) {
        watchError = e;
      } finally {
        ended = true;
      }
    })();
    const lines = () => entries.flatMap(({ e }) => String(e.log ?? "").split(/\r?\n/).map((l) => l.trim()).filter(Boolean).map((line) => ({ line, e })));
    const want = expectedLogs.map((x) => x.line);
    const missing = () => want.filter((w) => !lines().some((l) => l.line === w));
    try {
      await waitFor(() => missing().length === 0 || watchError !== undefined, "logs.watch to deliver every machine log line", () => ({ missing: missing(), got: lines().map((l) => l.line), requests: logRequests.slice(-10) }));
      if (watchError) throw watchError;
      // Caught up. Now watch the poller for ~2 s: it must settle into its 30 s sleep (the server
      // echoes `from` when there is nothing new) and must not deliver anything twice.
      const caughtUp = Date.now();
      const requestsAtCatchUp = logRequests.length;
      const entriesAtCatchUp = entries.length;
      await sleep(2000);
      const windowRequests = logRequests.length - requestsAtCatchUp;
      assert(watchError === undefined, `logs.watch failed: ${describeError(watchError)}`);
      assert(windowRequests <= 3, `logs.watch busy-loops: ${windowRequests} GET /logs in the 2 s after catching up`, logRequests.slice(-10));
      assert(entries.length === entriesAtCatchUp, "logs.watch delivered entries again after catching up", entries.slice(entriesAtCatchUp).map(({ e }) => e));
      const all = lines();
      for (const x of expectedLogs) {
        const hits = all.filter((l) => l.line === x.line);
        assert(hits.length === 1, `log line "${x.line}" must appear exactly once (got ${hits.length})`, all.map((l) => l.line));
        const e = hits[0].e;
        assert(e.outputType === x.outputType, `log line "${x.line}" must be ${x.outputType}`, e);
        assert(e.machineName === MACHINE && e.instanceName === INSTANCE && e.orgId === ORG_ID && String(e.machineVersionId).startsWith("ver_"), `log entry metadata for "${x.line}"`, e);
        assert(typeof e.timestamp === "string" && ISO_MS.test(e.timestamp), `log entry timestamp must be toISOString form`, e);
      }
      const order = want.map((w) => all.findIndex((l) => l.line === w));
      assert(order.every((v, i) => i === 0 || v > order[i - 1]), "log lines must come in the order they were written", all.map((l) => l.line));
      const stamps = entries.map(({ e }) => e.timestamp);
      assert(stamps.every((t, i) => i === 0 || t >= stamps[i - 1]), "log timestamps must not go backwards", stamps);
      // The wire contract behind the polling (wire-api §5), from the responses themselves.
      const logCalls = logRequests.filter((r) => r.path.endsWith("/logs"));
      for (const r of logCalls) {
        if (r.maxTimestamp === undefined) continue;
        assert(ISO_MS.test(r.maxTimestamp), "maxTimestamp must be in toISOString form", r);
        if (r.count === 0) assert(r.maxTimestamp === r.from, "an empty batch must echo `from` as maxTimestamp", r);
      }
      assert(logCalls.some((r) => r.count === 0 && r.maxTimestamp === r.from), "the poller never got the caught-up answer (empty batch echoing from)", logCalls);
      const extra = all.map((l) => l.line).filter((l) => !want.includes(l));
      return {
        lines: want,
        entries: entries.length,
        extraLines: extra,
        requests: logCalls.length,
        requestsIn2sAfterCatchUp: windowRequests,
        catchUpMs: caughtUp - watchStart,
      };
    } finally {
      ac.abort();
      await Promise.race([consumer, sleep(5000)]);
      if (!ended) process.stderr.write("realtime: logs.watch did not end within 5 s of the abort\n");
    }
  },
  CHECK_TIMEOUT_MS + 10000,
);

subA.unsubscribe();
subB.unsubscribe();
emit({ check: "all", ok: true, checks: passedCount(), restart: restarted, instance: INSTANCE });
process.exit(0);
