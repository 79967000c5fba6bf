#!/usr/bin/env node
// The benchmark baseline: what a developer would hand-roll instead of statehost.
//
//   node bench/baseline/server.mjs [--port 8788] [--host 127.0.0.1] [--db baseline.db] [--fixtures DIR]
//
// node:http + XState (4.38.3 and 5.33.3, the versions statehost runs) + better-sqlite3 (WAL,
// synchronous=FULL). Every event: load the persisted snapshot, restore the machine, send the event,
// persist the new snapshot and one history row, in one SQLite transaction; then answer. Nothing is
// kept in memory between requests. See README.md for what it deliberately does and does not do.

import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import path from "node:path";
import Database from "better-sqlite3";
import * as esbuild from "esbuild";
import { interpret, State } from "xstate4";
import { createActor } from "xstate5";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SETTLE_CAP_MS = 5000;
const MAX_BODY = 1_000_000;
const NAME = /^[a-zA-Z0-9_-]{1,128}$/;

// Exposed machine name -> fixture folder and XState major. The v5 variant gets the plain name.
const MACHINES = [
  ["toggle", "toggle", 5],
  ["toggle-v4", "toggle", 4],
  ["counter", "counter", 5],
  ["counter-v4", "counter", 4],
  ["fetcher", "fetcher", 5],
  ["fetcher-v4", "fetcher", 4],
];

// ------------------------------------------------------------------------------------------------
// Machines: bundle each fixture with esbuild at start; `xstate` becomes the same module URL this
// file imports (xstate4 or xstate5), so the machine and the interpreter share one XState copy.

const XSTATE_URL = { 4: import.meta.resolve("xstate4"), 5: import.meta.resolve("xstate5") };

async function loadMachine(fixtures, fixture, major) {
  const entry = path.join(fixtures, fixture, `v${major}`, "machine.ts");
  const result = await esbuild.build({
    entryPoints: [entry],
    bundle: true,
    write: false,
    format: "esm",
    platform: "node",
    target: "node20",
    logLevel: "silent",
    plugins: [
      {
        name: "xstate-major",
        setup(build) {
          build.onResolve({ filter: /^xstate$/ }, () => ({ path: XSTATE_URL[major], external: true }));
        },
      },
    ],
  });
  const code = result.outputFiles[0].text;
  const mod = await import("data:text/javascript;base64," + Buffer.from(code).toString("base64"));
  return { major, machine: mod.default, allowRead: mod.allowRead, allowWrite: mod.allowWrite };
}

// ------------------------------------------------------------------------------------------------
// XState glue, per major. Each returns a running actor wrapper with the same small surface.

function publicOf(context) {
  const p = context && context.public;
  return p !== null && typeof p === "object" && !Array.isArray(p) ? p : {};
}

function jsonCopy(value) {
  return value === undefined ? undefined : JSON.parse(JSON.stringify(value));
}

const v4 = {
  // The caller's context is shallow-merged over the machine's own (as statehost does).
  create(m, context) {
    const machine = context ? m.machine.withContext({ ...m.machine.context, ...context }) : m.machine;
    return v4.wrap(interpret(machine).start());
  },
  // XState 4 docs ("Persisting state"): State.create + resolveState + start(state). The last
  // transition's actions are dropped first, otherwise start() replays them (xstate #194, #1757).
  restore(m, snapshot) {
    const json = JSON.parse(snapshot);
    const state = m.machine.resolveState(State.create({ ...json, actions: [], children: {} }));
    return v4.wrap(interpret(m.machine).start(state));
  },
  view(m, snapshot) {
    return v4.describe(m.machine.resolveState(State.create(JSON.parse(snapshot))));
  },
  describe(state) {
    return { value: state.value, context: state.context, tags: [...state.tags].sort(), done: Boolean(state.done) };
  },
  wrap(service) {
    return {
      send(event) {
        service.send(event); // throws if an action or guard throws
      },
      settled: () => service.children.size === 0,
      onChange(fn) {
        const listener = () => fn();
        service.onTransition(listener);
        return () => service.off(listener);
      },
      error: () => null,
      view: () => v4.describe(service.state),
      persist: () => JSON.stringify(service.state),
      stop: () => service.stop(),
    };
  },
};

const v5 = {
  create(m, context) {
    let machine = m.machine;
    if (context) {
      const own = machine.config.context;
      const merged =
        typeof own === "function" ? (args) => ({ ...own(args), ...context }) : { ...(own ?? {}), ...context };
      machine = new machine.constructor({ ...machine.config, context: merged }, machine.implementations);
    }
    return v5.wrap(createActor(machine));
  },
  // XState 5 persistence: createActor(machine, { snapshot }) with a JSON round trip.
  restore(m, snapshot) {
    return v5.wrap(createActor(m.machine, { snapshot: JSON.parse(snapshot) }));
  },
  view(m, snapshot) {
    return v5.describe(createActor(m.machine, { snapshot: JSON.parse(snapshot) }).getSnapshot());
  },
  describe(snap) {
    return { value: snap.value, context: snap.context, tags: [...snap.tags].sort(), done: snap.status === "done" };
  },
  wrap(actor) {
    let failure = null;
    const listeners = new Set();
    // An error observer keeps XState from rethrowing machine errors asynchronously.
    actor.subscribe({
      next: () => listeners.forEach((fn) => fn()),
      error: (err) => {
        failure = err;
        listeners.forEach((fn) => fn());
      },
      complete: () => listeners.forEach((fn) => fn()),
    });
    actor.start();
    return {
      send(event) {
        actor.send(event);
      },
      settled() {
        const snap = actor.getSnapshot();
        if (snap.status !== "active") return true;
        return Object.values(snap.children ?? {}).every((child) => !child || child.getSnapshot().status !== "active");
      },
      onChange(fn) {
        listeners.add(fn);
        return () => listeners.delete(fn);
      },
      error: () => failure ?? (actor.getSnapshot().status === "error" ? actor.getSnapshot().error : null),
      view: () => v5.describe(actor.getSnapshot()),
      persist: () => JSON.stringify(actor.getPersistedSnapshot()),
      stop: () => actor.stop(),
    };
  },
};

const GLUE = { 4: v4, 5: v5 };

// Settled = no invoked/spawned child still running. Wait for that, at most SETTLE_CAP_MS; on the
// cap, the latest state is persisted as it is (README: "Settling").
function waitSettled(actor) {
  if (actor.settled() || actor.error()) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      off();
      resolve();
    };
    const off = actor.onChange(() => {
      if (actor.settled() || actor.error()) done();
    });
    const timer = setTimeout(done, SETTLE_CAP_MS);
  });
}

// ------------------------------------------------------------------------------------------------
// Errors: the same bodies statehost answers with, {error, code, parameter?}.

class ApiError extends Error {
  constructor(status, code, message, parameter) {
    super(message);
    this.status = status;
    this.code = code;
    this.parameter = parameter;
  }
  body() {
    const body = { error: this.message, code: this.code };
    if (this.parameter !== undefined) body.parameter = this.parameter;
    return body;
  }
}
const invalid = (message, parameter) => new ApiError(400, "invalid-parameter", message, parameter);
const notFound = (message) => new ApiError(404, "not-found", message);
const rejected = () => new ApiError(403, "rejected-by-machine-authorizer", "the machine's authorizer denied the request");
const machineError = (err) =>
  new ApiError(422, "machine-error", `the machine failed: ${err instanceof Error ? err.message : String(err)}`);

// ------------------------------------------------------------------------------------------------
// Storage.

function openDb(file) {
  const db = new Database(file);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  db.exec(`
    CREATE TABLE IF NOT EXISTS instances (
      machine    TEXT NOT NULL,
      name       TEXT NOT NULL,
      snapshot   TEXT NOT NULL,
      seq        INTEGER NOT NULL,
      ts         INTEGER NOT NULL,
      created_at INTEGER NOT NULL,
      PRIMARY KEY (machine, name)
    );
    CREATE TABLE IF NOT EXISTS transitions (
      machine    TEXT NOT NULL,
      name       TEXT NOT NULL,
      seq        INTEGER NOT NULL,
      event      TEXT NOT NULL,
      state      TEXT NOT NULL,
      created_at INTEGER NOT NULL,
      PRIMARY KEY (machine, name, seq)
    );
  `);
  return {
    db,
    get: db.prepare("SELECT snapshot, seq, ts FROM instances WHERE machine = ? AND name = ?"),
    insert: db.prepare(
      "INSERT INTO instances (machine, name, snapshot, seq, ts, created_at) VALUES (?, ?, ?, ?, ?, ?)",
    ),
    update: db.prepare(
      "UPDATE instances SET snapshot = ?, seq = ?, ts = ? WHERE machine = ? AND name = ? AND seq = ?",
    ),
    history: db.prepare(
      "INSERT INTO transitions (machine, name, seq, event, state, created_at) VALUES (?, ?, ?, ?, ?, ?)",
    ),
  };
}

// ------------------------------------------------------------------------------------------------
// Instances.

function wire(ts, view) {
  return { ts, state: view.value, publicContext: publicOf(view.context), tags: view.tags, done: view.done };
}

function authorize(fn, request) {
  if (typeof fn !== "function") return;
  let ok;
  try {
    ok = fn(request);
  } catch {
    ok = false;
  }
  if (ok !== true) throw rejected();
}

// One event at a time per instance (only matters while a machine awaits a promise: a synchronous
// event runs start to finish without yielding).
const tails = new Map();
function serially(key, fn) {
  const run = (tails.get(key) ?? Promise.resolve()).then(fn);
  const tail = run.then(
    () => {},
    () => {},
  );
  tails.set(key, tail);
  tail.then(() => tails.get(key) === tail && tails.delete(key));
  return run;
}

function makeService(store, machines) {
  const machineOf = (name) => {
    const m = machines.get(name);
    if (!m) throw notFound(`machine '${name}' not found`);
    return m;
  };

  // Write the new snapshot and one history row. Called inside a transaction.
  function persist(machine, name, actor, prev, event) {
    const seq = prev.seq + 1;
    const now = Date.now();
    const ts = Math.max(now, prev.ts + 1);
    const view = actor.view();
    const snapshot = actor.persist();
    if (prev.seq === 0) {
      store.insert.run(machine, name, snapshot, seq, ts, now);
    } else if (store.update.run(snapshot, seq, ts, machine, name, prev.seq).changes !== 1) {
      throw new ApiError(409, "invalid-state", `instance '${name}' moved on meanwhile`);
    }
    store.history.run(machine, name, seq, JSON.stringify(event), JSON.stringify(view.value), now);
    return wire(ts, view);
  }

  // Phase 1 runs inside one transaction: read, restore or create, send, and, when the machine is
  // settled at once (no running promise), persist. Otherwise it hands back the running actor.
  const step = store.db.transaction((kind, machine, name, m, arg) => {
    const row = store.get.get(machine, name);
    let actor, prev, event;
    if (kind === "create") {
      if (row) throw new ApiError(409, "invalid-state", `instance '${name}' already exists`);
      authorize(m.allowWrite, { type: "initialization", machineInstanceName: name, context: arg ?? {}, authContext: {} });
      prev = { seq: 0, ts: 0 };
      event = { type: "xstate.init" };
      try {
        actor = GLUE[m.major].create(m, arg);
      } catch (err) {
        throw machineError(err);
      }
    } else {
      if (!row) throw notFound(`instance '${name}' not found`);
      prev = { seq: row.seq, ts: row.ts };
      event = arg;
      actor = GLUE[m.major].restore(m, row.snapshot);
      try {
        const current = actor.view();
        if (current.done) {
          actor.stop();
          return { response: wire(row.ts, current) }; // a done instance changes no more
        }
        authorize(m.allowWrite, {
          type: "event",
          machineInstanceName: name,
          state: jsonCopy(current.value),
          context: jsonCopy(current.context),
          event: jsonCopy(arg),
          authContext: {},
        });
        actor.send(event);
      } catch (err) {
        actor.stop(); // stopping twice is harmless
        throw err instanceof ApiError ? err : machineError(err);
      }
    }
    const err = actor.error();
    if (err) {
      actor.stop();
      throw machineError(err);
    }
    if (!actor.settled()) return { actor, prev, event };
    try {
      return { response: persist(machine, name, actor, prev, event) };
    } finally {
      actor.stop();
    }
  });

  // Phase 2, only for a machine with a promise still running: wait (<= 5 s), then persist in a
  // second transaction that checks nobody moved the row meanwhile.
  const finish = store.db.transaction((machine, name, actor, prev, event) => persist(machine, name, actor, prev, event));

  async function run(kind, machine, name, arg) {
    const m = machineOf(machine);
    return serially(`${machine}\u0000${name}`, async () => {
      const first = step.immediate(kind, machine, name, m, arg);
      if (first.response) return first.response;
      const { actor, prev, event } = first;
      try {
        await waitSettled(actor);
        const err = actor.error();
        if (err) throw machineError(err);
        return finish.immediate(machine, name, actor, prev, event);
      } finally {
        actor.stop();
      }
    });
  }

  return {
    create: (machine, name, context) => run("create", machine, name, context),
    send: (machine, name, event) => run("event", machine, name, event),
    read(machine, name) {
      const m = machineOf(machine);
      const row = store.get.get(machine, name);
      if (!row) throw notFound(`instance '${name}' not found`);
      const view = GLUE[m.major].view(m, row.snapshot);
      authorize(m.allowRead, {
        machineInstanceName: name,
        state: jsonCopy(view.value),
        context: jsonCopy(view.context),
        authContext: {},
      });
      return wire(row.ts, view);
    },
  };
}

// ------------------------------------------------------------------------------------------------
// HTTP.

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new ApiError(413, "invalid-parameter", "the request body is too large", "body"));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

async function jsonBody(req, allowed) {
  const raw = await readBody(req);
  if (!raw.trim()) throw invalid("the request needs a JSON object body", "body");
  let body;
  try {
    body = JSON.parse(raw);
  } catch (err) {
    throw invalid(`the body is not valid JSON: ${err.message}`, "body");
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw invalid("the body must be a JSON object", "body");
  const unknown = Object.keys(body).filter((k) => !allowed.includes(k)).sort();
  if (unknown.length) throw invalid(`unknown field '${unknown[0]}'`, unknown[0]);
  return body;
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

const CREATE = /^\/machines\/([^/]+)$/;
const INSTANCE = /^\/machines\/([^/]+)\/i\/([^/]+)$/;
const EVENTS = /^\/machines\/([^/]+)\/i\/([^/]+)\/events$/;

function makeHandler(service) {
  // The Authorization header is accepted and ignored (README: auth is skipped).
  return async function handle(req, res) {
    const q = req.url.indexOf("?");
    const pathname = q === -1 ? req.url : req.url.slice(0, q);
    let match;
    if (pathname === "/health") {
      if (req.method !== "GET") throw new ApiError(405, "invalid-request", "Method Not Allowed");
      return send(res, 200, { ok: true });
    }
    if ((match = EVENTS.exec(pathname))) {
      if (req.method !== "POST") throw new ApiError(405, "invalid-request", "Method Not Allowed");
      const body = await jsonBody(req, ["event"]);
      let event = body.event;
      if (typeof event === "string") event = { type: event };
      if (event === null || typeof event !== "object" || Array.isArray(event) || typeof event.type !== "string" || !event.type) {
        throw invalid("event must be a string or an object with a string type", "event");
      }
      return send(res, 200, await service.send(match[1], match[2], event));
    }
    if ((match = INSTANCE.exec(pathname))) {
      if (req.method !== "GET") throw new ApiError(405, "invalid-request", "Method Not Allowed");
      return send(res, 200, service.read(match[1], match[2]));
    }
    if ((match = CREATE.exec(pathname))) {
      if (req.method !== "POST") throw new ApiError(405, "invalid-request", "Method Not Allowed");
      const body = await jsonBody(req, ["slug", "context", "machineVersionId"]);
      if (typeof body.slug !== "string" || !NAME.test(body.slug)) {
        throw invalid("slug must match ^[a-zA-Z0-9_-]{1,128}$", "slug");
      }
      const context = body.context;
      if (context !== undefined && (context === null || typeof context !== "object" || Array.isArray(context))) {
        throw invalid("context must be a JSON object", "context");
      }
      return send(res, 200, await service.create(match[1], body.slug, context));
    }
    throw notFound("Not Found");
  };
}

// ------------------------------------------------------------------------------------------------

async function main() {
  const { values } = parseArgs({
    options: {
      port: { type: "string", default: "8788" },
      host: { type: "string", default: "127.0.0.1" },
      db: { type: "string", default: "baseline.db" },
      fixtures: { type: "string", default: path.resolve(HERE, "../../fixtures/machines") },
    },
  });
  const machines = new Map();
  for (const [name, fixture, major] of MACHINES) {
    machines.set(name, await loadMachine(values.fixtures, fixture, major));
  }
  const store = openDb(values.db);
  const service = makeService(store, machines);
  const handle = makeHandler(service);
  const server = createServer((req, res) => {
    handle(req, res).catch((err) => {
      if (!(err instanceof ApiError)) {
        console.error(err);
        err = new ApiError(500, "internal-error", "the server failed to handle the request");
      }
      if (!res.headersSent) send(res, err.status, err.body());
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 75_000; // aiohttp's default, so both servers keep connections alike
  server.headersTimeout = 80_000;
  server.listen(Number(values.port), values.host, () => {
    const { address, port } = server.address();
    process.stdout.write(`listening http://${address}:${port}\n`);
  });
  const stop = () => {
    server.close();
    server.closeAllConnections();
    store.db.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
