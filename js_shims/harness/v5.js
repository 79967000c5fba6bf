// harness/v5.js: drive an XState 5 actor for one settle window (runtime-semantics 12.4.3).
//
// - The ordinary actor runs the machine with a clock that never sleeps (H timers).
// - The system scheduler's schedule/cancel/cancelAll are replaced before start(): events the root
//   schedules for itself are reported as timer ops for the host's durable table; everything that
//   involves a child keeps XState's own scheduler on the H clock (ephemeral, inside the window).
// - Restore needs no stripping of actions (v5 replays none) but removes the children that were
//   running at the last commit; their `xstate.error.actor.<id>` is delivered first, when the current
//   state can take it (an unhandled one would put the whole actor in error status for good).
// - Transitions are observed through the inspection API, which pairs each snapshot with its event.

const V5 = (() => {
  const clock = {
    setTimeout: (fn, ms) => H.setTimer(fn, ms, [], false),
    clearTimeout: (id) => H.clearTimer(id),
  };

  function view(snapshot, event) {
    const out = {
      state: snapshot.value,
      context: snapshot.context,
      publicContext: Common.publicOf(snapshot.context),
      tags: Array.from(snapshot.tags || []),
      done: snapshot.status === "done",
      event,
    };
    if (snapshot.status === "done") out.output = snapshot.output === undefined ? null : snapshot.output;
    return out;
  }

  // The caller's context is shallow-merged over the machine's initial context, which may be an
  // object or a function of { input, spawn, self }; the caller's context is also passed as input.
  function withContext(machine, extra, copy) {
    const original = machine.config.context;
    const own = copy || ((value) => value);
    const context = typeof original === "function"
      ? (args) => own(Object.assign({}, original(args), extra))
      : own(Object.assign({}, original, extra));
    return new machine.constructor(Object.assign({}, machine.config, { context }), machine.implementations);
  }

  function start(api, machine, req, rec) {
    let logic = machine;
    let input;
    let snapshot;
    if (req.kind === "create" && req.context) {
      logic = withContext(machine, req.context, req.isolate);
      input = req.context;
    } else if (req.kind === "create" && req.isolate && machine.config.context !== undefined) {
      // A live actor sharing its VM: its own deep copy of the initial context (runtime-semantics 13.1).
      logic = withContext(machine, {}, req.isolate);
    }
    if (req.kind === "upgrade") {
      req = Object.assign({}, req, { snapshot: { xstate: adopt(machine, req.description), inflight: [] } });
    }
    if (req.kind !== "create") {
      const children = Object.assign({}, req.snapshot.xstate.children);
      if (req.kind === "event" || req.kind === "recover") for (const id of req.snapshot.inflight) delete children[id];
      snapshot = Object.assign({}, req.snapshot.xstate, { children });
    }

    let actor = null;
    let restoring = req.kind !== "create";
    // A macrostep is one transition when it produced a new snapshot, or when it took a transition
    // that only ran actions (v5 keeps the same snapshot object then; v4 reports it as changed).
    let last = null;
    let handled = false;
    const inspect = (ev) => {
      if (actor === null || ev.actorRef !== actor) return;
      if (ev.type === "@xstate.microstep") {
        if (ev._transitions && ev._transitions.length) handled = true;
        return;
      }
      if (ev.type !== "@xstate.snapshot") return;
      const fresh = ev.snapshot !== last;
      last = ev.snapshot;
      const took = handled;
      handled = false;
      if (restoring || ev.snapshot.status === "error" || !(fresh || took)) return;
      rec.transition(view(ev.snapshot, ev.event));
    };
    actor = api.createActor(logic, { snapshot, input, clock, inspect });

    const scheduler = actor.system.scheduler;
    const own = { schedule: scheduler.schedule, cancel: scheduler.cancel, cancelAll: scheduler.cancelAll };
    // Another persistent instance (wire-api 7.6): XState's own sendTo(ref, …) with a reference from
    // spawnPersistentInstance, or sendParent from a persistent child. XState's internal events
    // (done/error of this actor, relayed to a parent) stay inside.
    const persistent = (target) =>
      StatebackedRt.isInstanceRef(target)
        ? { machineName: target.machineName, machineInstanceName: target.machineInstanceName, kind: "event" }
        : null;
    scheduler.schedule = (source, target, event, delay, id) => {
      if (source === actor && target === actor) {
        rec.timer({ op: "set", id: id === undefined ? null : String(id), delayMs: delay, event });
      } else if (source === actor && persistent(target)) {
        rec.timer({ op: "set", id: id === undefined ? null : String(id), delayMs: delay, event, target: persistent(target) });
      } else {
        own.schedule(source, target, event, delay, id);
      }
    };
    scheduler.cancel = (source, id) => {
      if (source === actor) rec.timer({ op: "cancel", id: String(id) });
      own.cancel(source, id);
    };
    scheduler.cancelAll = (ref) => {
      if (ref === actor) rec.timer({ op: "cancelAll" });
      own.cancelAll(ref);
    };
    const relay = actor.system._relay;
    actor.system._relay = (source, target, event) => {
      const to = persistent(target);
      if (!to) return relay(source, target, event);
      if (source === actor && event && typeof event.type === "string" && !event.type.startsWith("xstate.")) {
        rec.timer({ op: "set", id: null, delayMs: 0, event, target: to });
      }
      return undefined;
    };
    // Without an error observer XState rethrows through a global setTimeout.
    actor.subscribe({ error: (err) => rec.setFault(err) });

    actor.start();
    // sendParent resolves the actor's parent when it runs; a persistent child's parent is the
    // instance that spawned it (set after start: a root actor starts its own system).
    if (req.parent) {
      actor._parent = { type: "statebacked.instance", id: "#_parent", machineName: req.parent.machineName, machineInstanceName: req.parent.machineInstanceName };
    }
    restoring = false;
    if (req.kind === "upgrade") rec.transition(view(actor.getSnapshot(), req.event));
    if (req.kind === "event" || req.kind === "recover") {
      for (const id of req.snapshot.inflight) {
        const ev = { type: `xstate.error.actor.${id}`, error: Object.assign({}, Common.CUT_OFF) };
        if (actor.getSnapshot().can(ev)) {
          actor.send(ev);
        } else {
          H.log("stderr", "warn", `service ${id} was cut off; the current state cannot take ${ev.type}, so the error event was skipped`);
        }
      }
    }

    return {
      send(event) {
        actor.send(event);
      },
      // A live actor starts a new window (runtime/actors.py): report what a restore reports there.
      // Restoring a done snapshot stops the actor again, which cancels all its timers (cancelAll).
      newWindow() {
        if (actor.getSnapshot().status === "done") rec.timer({ op: "cancelAll" });
      },
      inflight() {
        const children = actor.getSnapshot().children || {};
        return Object.keys(children).filter((id) => {
          const child = children[id];
          return child && child.getSnapshot && child.getSnapshot().status === "active";
        });
      },
      persisted() {
        return Common.jsonSafe(actor.getPersistedSnapshot(), "the machine's snapshot");
      },
      current() {
        return view(actor.getSnapshot(), null);
      },
      status() {
        return actor.getSnapshot().status;
      },
    };
  }

  function nodeAt(machine, path) {
    let node = machine.root;
    for (const key of path) {
      node = node && node.states ? node.states[key] : undefined;
    }
    return node;
  }

  function historyChildren(node) {
    return node && node.states ? Object.values(node.states).filter((n) => n.type === "history") : [];
  }

  // The instance as state paths (migrations, wire-api 7.8); v5 keeps history per history node id.
  function describe(machine, xstate) {
    const history = [];
    const hv = xstate.historyValue || {};
    for (const id of Object.keys(hv)) {
      const node = machine.getStateNodeById(id);
      const paths = (hv[id] || []).map((n) => machine.getStateNodeById(n.id).path);
      if (node.parent && paths.length) history.push({ parent: node.parent.path, paths });
    }
    return { paths: Paths.leaves(xstate.value), history, context: xstate.context };
  }

  // A persisted snapshot of this machine from migrated state paths, or a TypeError naming what does
  // not fit. resolveState throws for a state name the machine does not have.
  function adopt(machine, d) {
    Paths.checkDescription(d, "the migrated instance");
    const resolved = machine.resolveState({ value: Paths.value(d.paths), context: d.context });
    Paths.checkResolved(d.paths, Paths.leaves(resolved.value));
    const persisted = Common.jsonSafe(machine.getPersistedSnapshot(resolved), "the migrated snapshot");
    persisted.historyValue = {};
    persisted.children = {};
    for (const entry of d.history || []) {
      const owner = Paths.owner(entry.paths, (prefix) => historyChildren(nodeAt(machine, prefix)).length > 0);
      if (owner === null) {
        H.log("stderr", "warn", `upgrade: no history state of the new version owns ${JSON.stringify(entry.paths)}; that history is dropped`);
        continue;
      }
      for (const h of historyChildren(nodeAt(machine, owner))) {
        const ids = h.history === "deep"
          ? entry.paths.map((p) => nodeAt(machine, p))
          : entry.paths.map((p) => nodeAt(machine, p.slice(0, owner.length + 1)));
        if (ids.some((n) => !n)) throw new TypeError(`a remembered history path does not exist in the new version: ${JSON.stringify(entry.paths)}`);
        persisted.historyValue[h.id] = Array.from(new Set(ids.map((n) => n.id))).map((id) => ({ id }));
      }
    }
    return persisted;
  }

  return { start, view, describe };
})();
