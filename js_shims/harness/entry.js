// harness/entry.js: the one entry function the host calls (host.d.ts). It is put on globalThis only
// until the host captures it, right after the prelude and before any user code.

(() => {
  let M = null; // { user, api, major, machine }
  // A slot is one instance's session: the sandbox's own (`main`), or one of the live actors a
  // shared VM hosts (runtime/actors.py), keyed by the host's actor key. Every entry selects its slot
  // first (`req.actor`), so recorders, H scopes and spawned references never cross actors.
  const main = { session: null, rec: Common.createRecorder(), denied: false, scope: H.scope(), spawned: StatebackedRt.spawnedMap(), actor: false };
  const actors = new Map();
  let cur = main;

  function select(op, req) {
    let slot = main;
    if (req && req.actor !== undefined) {
      const key = String(req.actor);
      if (op === "begin") {
        // A (re)start of the actor: a fresh slot. The old one, if any, is dropped without stop()
        // (stop() runs exit actions, which would queue real effects: runtime-semantics 12.2).
        slot = { session: null, rec: Common.createRecorder(), denied: false, scope: H.newScope(), spawned: new Map(), actor: true };
        actors.set(key, slot);
      } else {
        slot = actors.get(key);
        if (!slot) throw new Error(`statehost: no live actor ${key}`);
      }
    }
    if (slot !== cur) {
      cur = slot;
      H.use(slot.scope);
      StatebackedRt.use(slot.rec, slot.spawned);
      V4.use(slot.actor ? slot : null);
    }
    return slot;
  }

  // Drop live actors (eviction, a refused commit, the end of a window that did not settle): the
  // objects go, nothing of theirs runs (no stop(), no exit actions).
  function drop(req) {
    for (const key of req.actors || []) actors.delete(String(key));
    return { live: actors.size };
  }

  // Deep copy of an initial context for a live actor (runtime-semantics 13.1): plain objects,
  // arrays, Dates, Maps and Sets are copied; anything else (functions, class instances) is shared,
  // as it is between events of one instance.
  function deepCopy(value, seen) {
    if (value === null || typeof value !== "object") return value;
    seen = seen || new Map();
    if (seen.has(value)) return seen.get(value);
    let out;
    if (Array.isArray(value)) {
      out = [];
      seen.set(value, out);
      for (let i = 0; i < value.length; i++) out[i] = deepCopy(value[i], seen);
      return out;
    }
    if (value instanceof Date) return new Date(value.getTime());
    if (value instanceof Map) {
      out = new Map();
      seen.set(value, out);
      for (const [k, v] of value) out.set(deepCopy(k, seen), deepCopy(v, seen));
      return out;
    }
    if (value instanceof Set) {
      out = new Set();
      seen.set(value, out);
      for (const v of value) out.add(deepCopy(v, seen));
      return out;
    }
    const proto = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) return value;
    out = Object.create(proto);
    seen.set(value, out);
    for (const key of Object.keys(value)) out[key] = deepCopy(value[key], seen);
    return out;
  }

  // The bundle's `var __m` (and the runtime API's `var __statehost_xstate`) are non-configurable
  // globals: they cannot be deleted, so they are emptied once captured.
  function take(name) {
    const value = globalThis[name];
    if (!Reflect.deleteProperty(globalThis, name)) globalThis[name] = undefined;
    return value;
  }

  function attach(req) {
    const m = take("__m");
    if (!m || typeof m !== "object" || !m.user) throw new TypeError("the bundle did not define its exports");
    const user = m.user;
    const machine = user.default;
    const major = Common.probeMajor(machine);
    const exports = Object.keys(user).sort();
    if (major === null) {
      throw new TypeError("the module's default export is not an XState machine (export default createMachine(...))");
    }
    for (const name of ["allowRead", "allowWrite"]) {
      if (typeof user[name] !== "function") {
        throw new TypeError(`the module does not export an ${name} function (export const ${name} = (req) => boolean)`);
      }
    }
    if (req.runtimeApi === "none") return { major, exports };
    let api = m;
    if (req.runtimeApi === "global") {
      api = take("__statehost_xstate");
    }
    const needed = major === 5 ? "createActor" : "interpret";
    if (!api || typeof api[needed] !== "function") {
      throw new TypeError(`XState ${major}'s ${needed} is missing from the runtime API`);
    }
    M = { user, api, major, machine };
    StatebackedRt.attach(M, main.rec);
    return { major, exports };
  }

  function begin(req) {
    if (!M) throw new Error("statehost: begin before attach");
    if (cur.session) throw new Error("statehost: one session per sandbox");
    H.begin(req);
    const event = req.event === undefined ? undefined : Common.toEvent(req.event);
    if (req.authContext !== null && req.kind !== "restore" && req.kind !== "upgrade") {
      const arg = req.kind === "create"
        ? { type: "initialization", machineInstanceName: req.instanceName, context: req.context || {}, authContext: req.authContext }
        : {
            type: "event",
            machineInstanceName: req.instanceName,
            state: req.snapshot.xstate.value,
            context: req.snapshot.xstate.context,
            event,
            authContext: req.authContext,
          };
      if (!Common.authorize(M.user.allowWrite, "allowWrite", arg)) {
        cur.denied = true;
        return;
      }
    }
    const driver = M.major === 5 ? V5 : V4;
    const slot = cur;
    try {
      // A live actor starts from its own copy of the initial context (runtime-semantics 13.1).
      slot.session = driver.start(M.api, M.machine, slot.actor ? Object.assign({}, req, { isolate: deepCopy, slot }) : req, slot.rec);
      if (event !== undefined && req.kind !== "upgrade") slot.session.send(event);
    } catch (err) {
      slot.rec.setFault(err);
    }
  }

  // An event that arrives while the window is still open joins the live session: it is authorized
  // against the current state and sent into the running interpreter (its services keep running).
  function send(req) {
    const session = cur.session;
    if (!session) throw new Error("statehost: send without a live session");
    if (req.window === true) {
      H.freshWindow();
      // v4: children made in this window are numbered as in a fresh sandbox (the root keeps its id).
      if (cur.actor && cur.sessions !== undefined) cur.sessions = 1;
      if (cur.actor && session.newWindow) session.newWindow();
    }
    H.begin(req);
    const event = Common.toEvent(req.event);
    if (req.authContext !== null) {
      const current = session.current();
      const arg = {
        type: "event",
        machineInstanceName: req.instanceName,
        state: Common.jsonSafe(current.state, "the state"),
        context: Common.jsonSafe(current.context, "the context"),
        event,
        authContext: req.authContext,
      };
      if (!Common.authorize(M.user.allowWrite, "allowWrite", arg)) return { denied: true };
    }
    try {
      session.send(event);
    } catch (err) {
      cur.rec.setFault(err);
    }
    return undefined;
  }

  function collect() {
    const { session, denied } = cur;
    const drained = cur.rec.drain();
    let persisted = null;
    let fault = drained.fault;
    if (!fault && session && session.status && session.status() === "error") {
      fault = { kind: "error", name: "Error", message: "the machine reached XState's error status" };
    }
    if (!fault && session && !denied) {
      try {
        persisted = { major: M.major, xstate: session.persisted(), inflight: session.inflight() };
        for (const op of drained.timers) {
          if (op.event !== undefined) op.event = Common.jsonSafe(op.event, "a delayed event");
        }
        for (const t of drained.transitions) {
          t.context = Common.jsonSafe(t.context, "the machine's context");
          t.publicContext = Common.jsonSafe(t.publicContext, "the public context");
          t.event = Common.jsonSafe(t.event, "the event");
          if (t.output !== undefined) t.output = Common.jsonSafe(t.output, "the final state's output");
        }
      } catch (err) {
        fault = Common.describeFault(err);
        persisted = null;
      }
    }
    const due = H.nextDue();
    return {
      transitions: fault ? [] : drained.transitions,
      persisted,
      timers: fault ? [] : drained.timers,
      requests: fault ? [] : H.drainRequests(),
      logs: H.drainLogs(),
      pendingRequests: H.pendingCount(),
      nextTimerMs: due,
      fault: fault || undefined,
      denied: denied || undefined,
    };
  }

  function settle(req) {
    H.begin(req);
    H.settle(req.results);
  }

  function fire(req) {
    H.begin(req);
    try {
      H.fireDue();
    } catch (err) {
      cur.rec.setFault(err);
    }
  }

  function authorizeRead(req) {
    H.begin(req);
    const allowed = Common.authorize(M.user.allowRead, "allowRead", {
      machineInstanceName: req.instanceName,
      state: req.state,
      context: req.context,
      authContext: req.authContext,
    });
    return { allowed, logs: H.drainLogs() };
  }

  // The persisted instance as state paths and context, for a migration (nothing runs).
  function describe(req) {
    H.begin(req);
    const driver = M.major === 5 ? V5 : V4;
    return { description: Common.jsonSafe(driver.describe(M.machine, req.snapshot.xstate), "the instance"), logs: H.drainLogs() };
  }

  // The machine's shape (states, transitions, guards' names, delays, invokes) for drawing it.
  function structure(req) {
    H.begin(req);
    return { structure: Common.jsonSafe(Structure.of(M.machine, M.major), "the structure"), logs: H.drainLogs() };
  }

  // A migration module (wire-api 7.8) instead of a machine: check its exports, or map a description
  // of an instance through upgradeState and upgradeContext.
  function migrate(req) {
    H.begin(req);
    const m = take("__m");
    const user = m && m.user;
    for (const name of ["upgradeState", "upgradeContext"]) {
      if (!user || typeof user[name] !== "function") {
        throw new TypeError(`the migration does not export an ${name} function (wire-api 7.8)`);
      }
    }
    if (req.check) return { exports: Object.keys(user).sort(), logs: H.drainLogs() };
    const d = Paths.checkDescription(req.description, "the instance");
    const context = d.context;
    const upgrade = (path) => {
      const out = user.upgradeState(path.slice(), context);
      if (!Array.isArray(out) || !out.length || !out.every((k) => typeof k === "string" && k)) {
        throw new TypeError(`upgradeState(${JSON.stringify(path)}) returned ${Common.jsonSafe(out === undefined ? null : out, "its result") === null ? String(out) : JSON.stringify(out)}; it must return a non-empty array of state names`);
      }
      return out.slice();
    };
    const unique = (paths) => Array.from(new Map(paths.map((p) => [JSON.stringify(p), p])).values());
    const paths = unique(d.paths.map(upgrade));
    const history = (d.history || []).map((h) => ({ paths: unique(h.paths.map(upgrade)) }));
    const upgraded = user.upgradeContext(d.paths.map((p) => p.slice()), paths.map((p) => p.slice()), context);
    if (!upgraded || typeof upgraded !== "object" || Array.isArray(upgraded)) {
      throw new TypeError("upgradeContext must return the new context, an object");
    }
    return {
      description: { paths, history, context: Common.jsonSafe(upgraded, "the upgraded context") },
      logs: H.drainLogs(),
    };
  }

  // Call an exported function by path (e.g. httpApiMapper.<slug>.handler) with one JSON argument;
  // it may return a promise. The host pumps until quiescent (serving host calls such as
  // crypto.subtle), then reads the outcome with invoke_result.
  let invoked = null;
  function invoke(req) {
    H.begin(req);
    let fn = M.user;
    let owner = null;
    for (const key of req.path) {
      owner = fn;
      fn = fn !== null && (typeof fn === "object" || typeof fn === "function") && Object.prototype.hasOwnProperty.call(fn, key) ? fn[key] : undefined;
    }
    if (typeof fn !== "function") {
      invoked = { missing: true };
      return;
    }
    invoked = { pending: true };
    const settle = (outcome) => {
      invoked = outcome;
    };
    Promise.resolve()
      .then(() => fn.call(owner, req.arg))
      .then(
        (value) => {
          try {
            settle({ value: Common.jsonSafe(value === undefined ? null : value, "the returned value") });
          } catch (err) {
            settle({ error: Common.describeFault(err) });
          }
        },
        (err) => settle({ error: Common.describeFault(err) }),
      );
  }

  function invokeResult() {
    return invoked || { missing: true };
  }

  const ops = {
    attach, begin, send, collect, settle, fire, authorize_read: authorizeRead, describe, structure, migrate, invoke,
    invoke_result: invokeResult, drop,
  };

  function entry(op, arg) {
    const fn = ops[op];
    if (!fn) throw new Error(`statehost: unknown entry op ${op}`);
    let reply;
    try {
      const req = H.parse(arg);
      select(op, req);
      reply = fn(req);
    } catch (err) {
      reply = { fault: Common.describeFault(err) };
    }
    return reply === undefined ? "" : H.stringify(reply);
  }

  Object.defineProperty(globalThis, "__statehost_entry", { value: entry, writable: true, configurable: true, enumerable: false });
})();
