// harness/v4.js: drive an XState 4 machine for one settle window (runtime-semantics 12.3).
//
// - The ordinary interpreter runs the machine, with a clock that never sleeps (H timers).
// - Timers of the instance itself are reported, never armed: the root interpreter's `defer` and
//   `cancel` are replaced on the instance, so every delayed send/raise/`after` becomes a timer op for
//   the host's durable table. Child interpreters keep the prototype's methods: their timers are
//   ephemeral and only fire inside the window.
// - Restore strips the last transition's `actions` and `children`, so nothing is replayed
//   (statelyai/xstate#194, #1757, #2109; start(state) would re-run actions and re-arm timers).
// - Services that were running at the last commit are not re-run: their `error.platform.<id>` is
//   delivered first (at-most-once, wire-api 7.4).

const V4 = (() => {
  const clock = {
    setTimeout: (fn, ms) => H.setTimer(fn, ms, [], false),
    clearTimeout: (id) => H.clearTimer(id),
  };

  function view(state) {
    const out = {
      state: state.value,
      context: state.context,
      publicContext: Common.publicOf(state.context),
      tags: Array.from(state.tags || []),
      done: Boolean(state.done),
      event: state.event,
    };
    if (state.done) out.output = doneData(state);
    return out;
  }

  // What v4 puts in done.invoke.<id> for a machine child: its top-level final state's `data`.
  function doneData(state) {
    const final = (state.configuration || []).find((sn) => sn.type === "final" && sn.parent === state.machine);
    const data = final && final.doneData;
    if (data === undefined) return null;
    if (typeof data === "function") return data(state.context, state.event);
    if (data && typeof data === "object") {
      const out = {};
      for (const key of Object.keys(data)) out[key] = typeof data[key] === "function" ? data[key](state.context, state.event) : data[key];
      return out;
    }
    return data;
  }

  // persistentInvocableSource's src: a persistent child instance, created like a spawn; the
  // invocation is not a service of this window (no cut-off error for it), and the child's final
  // state comes back later as done.invoke.<id>, sent by the host.
  const invokeService = (ctx, e, { data, src }) => {
    const callback = () => () => {};
    callback.__statebackedInvoke = { src, data };
    return callback;
  };

  // ---- live actors sharing one VM (runtime/actors.py) ---------------------------------------------
  // XState 4 books interpreter session ids ("x:N") from one counter per XState copy, and they reach
  // the persisted state (`_sessionid`, events' `origin`). A fresh sandbox starts that counter at the
  // same value for every window; in a VM shared by live actors it would keep counting across actors.
  // So, once a VM hosts actors, the interpreter prototype's `sessionId` becomes an accessor that
  // numbers each actor's interpreters from that same start (its root first, children from +1 in each
  // window), and sends to a session id resolve among the current actor's own interpreters first.
  let actorSlot = null;
  let sessionBase = null;
  let patchedProto = null;
  let patchedProbe = null;
  const patched = new WeakSet();

  function use(slot) {
    actorSlot = slot;
  }

  function isolateSessions(proto, firstId) {
    if (patched.has(proto)) return;
    patched.add(proto);
    // The throwaway interpreter that found the prototype booked the id a fresh sandbox's first
    // interpreter gets: number from there.
    if (sessionBase === null && /^x:\d+$/.test(String(firstId))) sessionBase = Number(String(firstId).slice(2));
    Object.defineProperty(proto, "sessionId", {
      configurable: true,
      get() {
        return this.__statehostSessionId;
      },
      set(value) {
        let id = value;
        if (actorSlot && typeof value === "string" && /^x:\d+$/.test(value)) {
          if (sessionBase === null) sessionBase = Number(value.slice(2));
          id = `x:${sessionBase + actorSlot.sessions++}`;
          actorSlot.interpreters.set(id, this);
        }
        Object.defineProperty(this, "__statehostSessionId", { value: id, writable: true, configurable: true, enumerable: false });
      },
    });
    const sendTo = proto.sendTo;
    proto.sendTo = function (event, to, immediate) {
      if (actorSlot && typeof to === "string" && !this.children.has(to)) {
        const own = actorSlot.interpreters.get(to);
        if (own) return sendTo.call(this, event, own, immediate);
      }
      return sendTo.call(this, event, to, immediate);
    };
  }

  function start(api, machine, req, rec) {
    if (req.slot) {
      // Before the first interpreter of this actor is made (it books its session id when made).
      const proto = patchedProto || Object.getPrototypeOf((patchedProbe = api.interpret(machine.withConfig({}), { devTools: false })));
      isolateSessions(proto, patchedProbe && patchedProbe.sessionId);
      patchedProto = proto;
      req.slot.sessions = 0;
      req.slot.interpreters = new Map();
    }
    let logic = machine.withConfig({ services: { "statebacked.invoke": invokeService } });
    if (req.kind === "create" && req.context) {
      logic = logic.withContext(Object.assign({}, machine.context, req.context));
    }
    if (req.kind === "create" && req.isolate && logic.context !== undefined) {
      // A live actor sharing its VM: its own deep copy, so an in-place mutation of the context in
      // one actor never reaches machine.context or its neighbours (runtime-semantics 13.1).
      logic = logic.withContext(req.isolate(logic.context));
    }
    const svc = api.interpret(logic, { clock, devTools: false });
    const proto = Object.getPrototypeOf(svc);
    let restoring = false;
    const persistentInvocations = new Set();
    svc.spawn = function (entity, name, options) {
      const invoked = typeof entity === "function" ? entity.__statebackedInvoke : undefined;
      if (invoked && invoked.src && typeof invoked.src.machineName === "string") {
        const src = invoked.src;
        const target = { machineName: src.machineName, machineInstanceName: src.machineInstanceName, kind: "spawn", invokeId: String(name) };
        if (src.machineVersionId) target.machineVersionId = src.machineVersionId;
        if (invoked.data !== undefined) target.context = Common.jsonSafe(invoked.data, "the invoked instance's data");
        rec.timer({ op: "set", id: null, delayMs: 0, event: { type: "statebacked.spawn" }, target });
        persistentInvocations.add(String(name));
      }
      return proto.spawn.call(this, entity, name, options);
    };

    // Another persistent instance (wire-api 7.6): a reference from spawnPersistentInstance, a child
    // id naming one in the context, or the persistent parent for sendParent. Ephemeral children and
    // an ephemeral parent keep XState's own delivery.
    const persistentTarget = (to) => {
      let ref = null;
      if (StatebackedRt.isInstanceRef(to)) ref = to;
      else if (to === "#_parent" && !svc.parent && req.parent) ref = req.parent;
      else if (typeof to === "string" && to !== "#_internal" && !svc.children.has(to)) {
        ref = StatebackedRt.spawnedRef(to) || findRef(svc.state.context, to);
      }
      return ref ? { machineName: ref.machineName, machineInstanceName: ref.machineInstanceName, kind: "event" } : null;
    };
    const sendTo = svc.sendTo;
    svc.sendTo = function (event, to, immediate) {
      const target = persistentTarget(to);
      if (!target) return sendTo.call(this, event, to, immediate);
      rec.timer({ op: "set", id: null, delayMs: 0, event: event.data, target });
      return undefined;
    };
    svc.defer = function (sendAction) {
      const event = sendAction._event ? sendAction._event.data : sendAction.event;
      const target = sendAction.to ? persistentTarget(sendAction.to) : null;
      if (target) {
        rec.timer({ op: "set", id: sendAction.id === undefined ? null : String(sendAction.id), delayMs: sendAction.delay, event, target });
        return undefined;
      }
      // Aimed at a child: ephemeral. "#_internal" is the machine itself: durable like any own timer.
      if (sendAction.to && sendAction.to !== "#_internal") return proto.defer.call(this, sendAction);
      rec.timer({ op: "set", id: sendAction.id === undefined ? null : String(sendAction.id), delayMs: sendAction.delay, event });
      return undefined;
    };
    svc.cancel = function (sendId) {
      rec.timer({ op: "cancel", id: String(sendId) });
      return proto.cancel.call(this, sendId);
    };
    // Faults inside promise callbacks (a service's done event whose action throws) never reach our
    // caller; catching them at `send` records them wherever they happen.
    const send = svc.send;
    svc.send = function () {
      try {
        return send.apply(this, arguments);
      } catch (err) {
        rec.setFault(err);
        throw err;
      }
    };
    svc.onTransition((state) => {
      if (restoring || state.changed === false) return;
      rec.transition(view(state));
    });

    if (req.kind === "upgrade") {
      req = Object.assign({}, req, { snapshot: { xstate: adopt(machine, req.description, req.event), inflight: [] } });
    }
    if (req.kind !== "create") {
      restoring = true;
      try {
        svc.start(Object.assign({}, req.snapshot.xstate, { actions: [], children: {} }));
      } finally {
        restoring = false;
      }
      for (const id of req.kind === "event" || req.kind === "recover" ? req.snapshot.inflight : []) {
        const type = `error.platform.${id}`;
        if (svc.state.nextEvents.includes(type)) {
          svc.send({ type, data: Object.assign({}, Common.CUT_OFF) });
        } else {
          H.log("stderr", "warn", `service ${id} was cut off; the current state has no ${type} transition, so the error event was skipped`);
        }
      }
      if (req.kind === "upgrade") rec.transition(view(svc.state));
    } else {
      svc.start();
    }

    return {
      send(event) {
        svc.send(event);
      },
      inflight() {
        return Array.from(svc.children.keys()).filter((id) => !persistentInvocations.has(id));
      },
      persisted() {
        const json = Common.jsonSafe(svc.state, "the machine's state");
        delete json.actions;
        delete json.children;
        delete json.history;
        // Derived on restore (tags from the configuration) or per transition (changed): keeping them
        // would make persist -> restore -> persist unstable.
        delete json.changed;
        delete json.tags;
        return json;
      },
      current() {
        return view(svc.state);
      },
    };
  }

  // A reference with this id (spawnPersistentInstance's `name`) anywhere in the context.
  function findRef(value, id, depth = 0) {
    if (!value || typeof value !== "object" || depth > 32) return null;
    if (StatebackedRt.isInstanceRef(value) && value.id === id) return value;
    for (const key of Object.keys(value)) {
      const found = findRef(value[key], id, depth + 1);
      if (found) return found;
    }
    return null;
  }

  function nodeAt(machine, path) {
    let node = machine;
    for (const key of path) {
      node = node && node.states ? node.states[key] : undefined;
    }
    return node;
  }

  function hasHistory(node) {
    return Boolean(node && node.states && Object.keys(node.states).some((k) => node.states[k].type === "history"));
  }

  // The instance as state paths (migrations, wire-api 7.8). v4 keeps, for every compound state, the
  // value it had when last active (historyValue: { current, states }); only the states that own a
  // history node are reported.
  function describe(machine, xstate) {
    const history = [];
    const owners = new Set();
    for (const id of machine.stateIds) {
      const node = machine.getStateNodeById(id);
      if (node.type !== "history" || !node.parent) continue;
      const parent = node.parent.path;
      if (owners.has(JSON.stringify(parent))) continue;
      owners.add(JSON.stringify(parent));
      let hv = xstate.historyValue;
      for (const key of parent) hv = hv && hv.states ? hv.states[key] : undefined;
      if (!hv || hv.current === undefined) continue;
      history.push({ parent, paths: Paths.leaves(hv.current).map((p) => parent.concat(p)) });
    }
    return { paths: Paths.leaves(xstate.value), history, context: xstate.context };
  }

  // A persisted State of this machine from migrated state paths, or a TypeError naming what does
  // not fit. resolveState throws for a state name the machine does not have.
  function adopt(machine, d, event) {
    Paths.checkDescription(d, "the migrated instance");
    const resolved = machine.resolveState({
      value: Paths.value(d.paths),
      context: d.context,
      _event: { name: event.type, data: event, $$type: "scxml", type: "external" },
    });
    Paths.checkResolved(d.paths, Paths.leaves(resolved.value));
    const historyValue = machine.historyValue(resolved.value);
    for (const entry of d.history || []) {
      const owner = Paths.owner(entry.paths, (prefix) => hasHistory(nodeAt(machine, prefix)));
      if (owner === null) {
        H.log("stderr", "warn", `upgrade: no history state of the new version owns ${JSON.stringify(entry.paths)}; that history is dropped`);
        continue;
      }
      const node = nodeAt(machine, owner);
      const remembered = node.resolve(Paths.value(entry.paths.map((p) => p.slice(owner.length))));
      const subtree = node.historyValue(remembered);
      if (!owner.length) {
        Object.assign(historyValue, subtree);
        continue;
      }
      let parent = historyValue;
      for (const key of owner.slice(0, -1)) parent = parent.states[key];
      parent.states[owner[owner.length - 1]] = subtree;
    }
    return {
      value: resolved.value,
      context: d.context,
      _event: { name: event.type, data: event, $$type: "scxml", type: "external" },
      _sessionid: null,
      event,
      historyValue,
      activities: {},
      meta: {},
      events: [],
      configuration: [],
      transitions: [],
      done: Boolean(resolved.done),
    };
  }

  return { start, view, describe, use };
})();
