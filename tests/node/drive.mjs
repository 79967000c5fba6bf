#!/usr/bin/env node
// Reference driver: runs one fixture scenario with REAL XState in node, so the differential tests can
// compare statehost's sandboxed results with it, step for step.
//
//   node tests/node/drive.mjs --bundle <bundle.js> [--runtime-api <api.js>] --scenario <scenario.json>
//                             [--stub-url http://127.0.0.1:PORT]
//
// Prints ONE JSON object to stdout: {"results": [<one entry per step>]}. Anything the machine or
// XState logs goes to stderr. The scenario format is described in fixtures/machines/README.md.
//
// Semantics (statehost must do the same):
// - One live interpreter for the whole scenario, with a fake clock ({setTimeout, clearTimeout}) as
//   XState's `clock` option. `Date.now` is not patched; the machine's own global timers are node's.
// - Creation context: the caller-supplied context is shallow-merged over the machine's initial
//   context, and only when the create step gives a `context`:
//     v4: interpret(machine.withContext({ ...machine.context, ...callerContext }), { clock })
//     v5: createActor(new machine.constructor({ ...machine.config, context: merged },
//                                             machine.implementations), { clock })
//         where merged = { ...machine.config.context, ...callerContext } when the config's context is
//         an object (or absent), and, when it is a function,
//         merged = (args) => ({ ...machine.config.context(args), ...callerContext }).
//         `machine.constructor` is XState's StateMachine class and `machine.implementations` holds the
//         actions/guards/actors/delays given to createMachine/setup/provide, so the clone is the same
//         machine with another initial context; entry actions run once, on the merged context. No
//         `input` is passed.
// - Authorizers get plain JSON copies: allowWrite({type: "initialization", machineInstanceName,
//   context: callerContext ?? {}, authContext}) before creating, allowWrite({type: "event",
//   machineInstanceName, state, context, event, authContext}) before each event (a denied event is
//   not sent), allowRead({machineInstanceName, state, context, authContext}) for a read step.
//   machineInstanceName is always "fixture-instance"; authContext defaults to {userId: "fixture-user"}.
// - After each create/event/advance the driver waits for the interpreter to settle: it loops on
//   setImmediate (plus a 5 ms real sleep once things look quiet) until no fetch or crypto.subtle
//   call is in flight (globalThis.fetch and crypto.subtle's methods are wrapped to count them, and a
//   response's body reads count too) and the snapshot (value, context, status) has not changed
//   for 5 iterations. Timers already due at the
//   virtual `now` (e.g. delay 0) fire during settling. Cap: 10 s, then {"error": "timeout"}.
// - `advance: N` moves the virtual clock to now + N, firing every timer due on the way in due order
//   (ties in the order they were set), moving `now` to each due time and settling after each firing.
// - With `"history": true` in the scenario, the output also has "history": one {state, event} per
//   transition, as statehost records its history rows (docs/decisions.md 3): v4 every
//   onTransition whose `state.changed` is not false (the initial state included); v5 every
//   `@xstate.snapshot` inspection event of the root actor that brought a new snapshot or followed a
//   microstep that took a transition (the initial snapshot included). The random-program oracle
//   (tests/oracle) compares it with the instance's history over the wire.

import fs from "node:fs";
import vm from "node:vm";

const INSTANCE_NAME = "fixture-instance";
const DEFAULT_AUTH = { userId: "fixture-user" };
const SETTLE_CAP_MS = 10_000;
const STABLE_ITERATIONS = 5;

// Everything but our one JSON line goes to stderr.
const writeOut = process.stdout.write.bind(process.stdout);
for (const name of ["log", "info", "debug", "warn", "error", "trace"]) {
  console[name] = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
}

function parseArgs(argv) {
  const opts = {};
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = argv[i + 1];
    if (!key.startsWith("--") || value === undefined) throw new Error(`bad arguments near ${key}`);
    opts[key.slice(2)] = value;
    i++;
  }
  if (!opts.bundle || !opts.scenario) {
    throw new Error("usage: drive.mjs --bundle <file> [--runtime-api <file>] --scenario <file> [--stub-url URL]");
  }
  return opts;
}

function substituteStub(value, stubUrl) {
  if (typeof value === "string") {
    if (!value.includes("{{STUB_URL}}")) return value;
    if (!stubUrl) throw new Error("the scenario uses {{STUB_URL}} but no --stub-url was given");
    return value.split("{{STUB_URL}}").join(stubUrl);
  }
  if (Array.isArray(value)) return value.map((v) => substituteStub(v, stubUrl));
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substituteStub(v, stubUrl)]));
  }
  return value;
}

const plain = (value) => (value === undefined ? undefined : JSON.parse(JSON.stringify(value)));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const tick = () => new Promise((resolve) => setImmediate(resolve));
const messageOf = (err) => (err && typeof err === "object" && "message" in err ? String(err.message) : String(err));

// ---- fake clock ------------------------------------------------------------------------------------
class FakeClock {
  constructor() {
    this.now = 0;
    this.seq = 0;
    this.timers = new Map();
    this.setTimeout = this.setTimeout.bind(this);
    this.clearTimeout = this.clearTimeout.bind(this);
  }
  setTimeout(fn, ms) {
    const id = ++this.seq;
    const delay = Number.isFinite(Number(ms)) ? Math.max(0, Number(ms)) : 0;
    this.timers.set(id, { id, due: this.now + delay, fn });
    return id;
  }
  clearTimeout(id) {
    this.timers.delete(id);
  }
  /** The earliest timer due at or before `limit` (ties: the one set first), or undefined. */
  next(limit) {
    let best;
    for (const t of this.timers.values()) {
      if (t.due <= limit && (!best || t.due < best.due || (t.due === best.due && t.id < best.id))) best = t;
    }
    return best;
  }
  /** Fire one timer due at or before `limit`; returns false when there is none. */
  fireOne(limit) {
    const t = this.next(limit);
    if (!t) return false;
    this.timers.delete(t.id);
    this.now = Math.max(this.now, t.due);
    t.fn();
    return true;
  }
}

// ---- fetch accounting ------------------------------------------------------------------------------
let inFlight = 0;
const realFetch = globalThis.fetch;
function track(promise) {
  inFlight++;
  return promise.finally(() => {
    inFlight--;
  });
}
globalThis.fetch = function fetch(...args) {
  return track(
    realFetch(...args).then((response) => {
      for (const method of ["json", "text", "arrayBuffer", "blob", "formData"]) {
        const original = response[method];
        if (typeof original === "function") {
          Object.defineProperty(response, method, {
            value: (...a) => track(original.apply(response, a)),
            configurable: true,
            writable: true,
          });
        }
      }
      return response;
    }),
  );
};

// crypto.subtle's promises settle on libuv's thread pool, outside the event loop's turns that the
// settle loop counts: on a busy machine a digest outlasts "5 quiet iterations", and the step was
// taken for settled while its service was still running. They count as in flight too.
const subtle = globalThis.crypto?.subtle;
if (subtle) {
  for (const name of [
    "digest", "encrypt", "decrypt", "sign", "verify", "generateKey", "deriveKey", "deriveBits",
    "importKey", "exportKey", "wrapKey", "unwrapKey",
  ]) {
    const original = subtle[name];
    if (typeof original === "function") {
      Object.defineProperty(subtle, name, {
        value: (...a) => track(original.apply(subtle, a)),
        configurable: true,
        writable: true,
      });
    }
  }
}

// ---- uncaught errors are attributed to the running step ---------------------------------------------
let stepError = null;
process.on("uncaughtException", (err) => {
  stepError ??= err;
});
process.on("unhandledRejection", (err) => {
  stepError ??= err;
});

// ---- the two XState majors behind one interface ----------------------------------------------------
function makeRunner(mod, api, history) {
  const machine = mod.user.default;
  if (!machine) throw new Error("the bundle's module has no default export");
  const interpret = mod.interpret ?? api?.interpret;
  const createActor = mod.createActor ?? api?.createActor;
  const clock = new FakeClock();
  let actorError = null;

  if (interpret && typeof machine.withContext === "function") {
    let service;
    return {
      major: 4,
      clock,
      start(callerContext) {
        const logic =
          callerContext === undefined ? machine : machine.withContext({ ...machine.context, ...callerContext });
        service = interpret(logic, { clock });
        if (history) {
          service.onTransition((state) => {
            if (state.changed === false) return;
            history.push({ state: plain(state.value), event: plain(state.event) });
          });
        }
        service.start();
      },
      send(event) {
        service.send(event);
      },
      snapshot() {
        const s = service.getSnapshot ? service.getSnapshot() : service.state;
        return { value: s.value, context: s.context, tags: [...(s.tags ?? [])], done: Boolean(s.done), error: null };
      },
    };
  }
  if (createActor) {
    let actor;
    return {
      major: 5,
      clock,
      start(callerContext) {
        let logic = machine;
        if (callerContext !== undefined) {
          const base = machine.config.context;
          const merged =
            typeof base === "function"
              ? (args) => ({ ...base(args), ...callerContext })
              : { ...(base ?? {}), ...callerContext };
          logic = new machine.constructor({ ...machine.config, context: merged }, machine.implementations);
        }
        const options = { clock };
        if (history) {
          let last = null;
          let took = false;
          options.inspect = (ev) => {
            if (!actor || ev.actorRef !== actor) return;
            if (ev.type === "@xstate.microstep") {
              if (ev._transitions && ev._transitions.length) took = true;
              return;
            }
            if (ev.type !== "@xstate.snapshot") return;
            const fresh = ev.snapshot !== last;
            last = ev.snapshot;
            const handled = took;
            took = false;
            if (ev.snapshot.status === "error" || !(fresh || handled)) return;
            history.push({ state: plain(ev.snapshot.value), event: plain(ev.event) });
          };
        }
        actor = createActor(logic, options);
        actor.subscribe({
          error: (err) => {
            actorError ??= err;
          },
        });
        actor.start();
      },
      send(event) {
        actor.send(event);
      },
      snapshot() {
        const s = actor.getSnapshot();
        const error = s.status === "error" ? (s.error ?? actorError ?? "the actor stopped with an error") : null;
        return { value: s.value, context: s.context, tags: [...(s.tags ?? [])], done: s.status === "done", error };
      },
    };
  }
  throw new Error("the bundle exports neither interpret (v4) nor createActor (v5)");
}

async function settle(runner) {
  const deadline = Date.now() + SETTLE_CAP_MS;
  const signature = () => {
    const s = runner.snapshot();
    try {
      return JSON.stringify([s.value, s.context, s.done, s.error ? messageOf(s.error) : null]);
    } catch (err) {
      return `unserializable: ${messageOf(err)}`;
    }
  };
  let last = signature();
  let stable = 0;
  while (stable < STABLE_ITERATIONS) {
    if (Date.now() > deadline) return false;
    await tick();
    if (stable > 0 || inFlight > 0) await sleep(5);
    while (runner.clock.fireOne(runner.clock.now)) await tick();
    const sig = signature();
    if (inFlight === 0 && sig === last) {
      stable++;
    } else {
      stable = 0;
      last = sig;
    }
  }
  return true;
}

function stateEntry(runner) {
  const s = runner.snapshot();
  if (s.error) return { error: messageOf(s.error) };
  const context = plain(s.context) ?? {};
  const pub = context && typeof context.public === "object" && !Array.isArray(context.public) && context.public;
  return {
    state: plain(s.value),
    context,
    publicContext: pub || {},
    tags: [...s.tags].sort(),
    done: s.done,
  };
}

async function runStep(step, ctx) {
  const auth = (where) => (where && where.authContext !== undefined ? where.authContext : DEFAULT_AUTH);
  if ("create" in step) {
    if (ctx.runner.started) return { error: "the scenario has more than one create step" };
    const create = step.create ?? {};
    const callerContext = create.context;
    const allowed = ctx.user.allowWrite({
      type: "initialization",
      machineInstanceName: INSTANCE_NAME,
      context: plain(callerContext ?? {}),
      authContext: plain(auth(create)),
    });
    if (!allowed) return { denied: true };
    ctx.runner.started = true;
    ctx.runner.start(callerContext === undefined ? undefined : plain(callerContext));
    return (await settle(ctx.runner)) ? stateEntry(ctx.runner) : { error: "timeout" };
  }
  if (!ctx.runner.started) return { error: "no instance: the scenario has no successful create step" };
  if ("event" in step) {
    const event = typeof step.event === "string" ? { type: step.event } : step.event;
    const s = ctx.runner.snapshot();
    if (s.error) return { error: messageOf(s.error) };
    const allowed = ctx.user.allowWrite({
      type: "event",
      machineInstanceName: INSTANCE_NAME,
      state: plain(s.value),
      context: plain(s.context) ?? {},
      event: plain(event),
      authContext: plain(auth(step)),
    });
    if (!allowed) return { denied: true };
    ctx.runner.send(plain(event));
    return (await settle(ctx.runner)) ? stateEntry(ctx.runner) : { error: "timeout" };
  }
  if ("advance" in step) {
    const clock = ctx.runner.clock;
    const target = clock.now + Math.max(0, Number(step.advance) || 0);
    while (clock.fireOne(target)) {
      if (!(await settle(ctx.runner))) return { error: "timeout" };
    }
    clock.now = target;
    return (await settle(ctx.runner)) ? stateEntry(ctx.runner) : { error: "timeout" };
  }
  if ("read" in step) {
    const s = ctx.runner.snapshot();
    const allowed = ctx.user.allowRead({
      machineInstanceName: INSTANCE_NAME,
      state: plain(s.value),
      context: plain(s.context) ?? {},
      authContext: plain(auth(step.read)),
    });
    return { allowed: Boolean(allowed) };
  }
  return { error: `unknown step: ${JSON.stringify(Object.keys(step))}` };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const scenario = substituteStub(JSON.parse(fs.readFileSync(opts.scenario, "utf8")), opts["stub-url"]);
  vm.runInThisContext(fs.readFileSync(opts.bundle, "utf8"), { filename: opts.bundle });
  if (opts["runtime-api"]) {
    vm.runInThisContext(fs.readFileSync(opts["runtime-api"], "utf8"), { filename: opts["runtime-api"] });
  }
  const mod = globalThis.__m;
  if (!mod || !mod.user) throw new Error("the bundle did not define __m.user");
  const history = scenario.history ? [] : null;
  const ctx = { user: mod.user, runner: makeRunner(mod, globalThis.__statehost_xstate, history) };

  const results = [];
  for (const step of scenario.steps) {
    stepError = null;
    let result;
    try {
      result = await runStep(step, ctx);
    } catch (err) {
      result = { error: messageOf(err) };
    }
    if (stepError && !("error" in result)) result = { error: messageOf(stepError) };
    results.push(result);
  }
  return history ? { results, history } : { results };
}

main().then(
  (out) => writeOut(JSON.stringify(out) + "\n", () => process.exit(0)),
  (err) => {
    process.stderr.write(`drive.mjs: ${err && err.stack ? err.stack : err}\n`);
    process.exit(2);
  },
);
