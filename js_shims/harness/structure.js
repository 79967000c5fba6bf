// harness/structure.js: a loaded machine's shape, for drawing it (the dashboard's statechart). Reads
// the StateNode tree only (ids, types, initial states, transitions, delays, guards' names, invokes,
// action names); never reads v4's initialState or runs an action, guard or delay expression.
//
// The same JSON for both majors:
//   { major, id, root: Node }
//   Node = { id, key, path, type: atomic|compound|parallel|final|history, initial?, history?,
//            historyTarget?, tags, description?, entry, exit, invoke: [{ id, src }],
//            transitions: [{ event, kind: on|always|after|done|invoke-done|invoke-error|invoke-snapshot,
//                            targets: [state id], guard?, delay?, reenter, actions: [name] }],
//            states: [Node] }

const Structure = (() => {
  const MAX_NODES = 2000;
  const MAX_NAME = 200;
  // Names JavaScript gives an inline function from the property it is written in: not a name.
  const INFERRED = new Set(["entry", "exit", "onEntry", "onExit", "actions", "cond", "guard", "src", "delay", "predicate", "exec"]);

  function clip(value) {
    const text = String(value);
    return text.length > MAX_NAME ? `${text.slice(0, MAX_NAME - 1)}…` : text;
  }

  // A readable name for an action, guard or delay written as a string, an object or a function.
  function nameOf(thing) {
    if (thing === undefined || thing === null) return undefined;
    if (typeof thing === "string") return clip(thing);
    if (typeof thing === "number") return clip(thing);
    if (typeof thing === "function") {
      if (typeof thing.type === "string" && thing.type) return clip(thing.type); // v5 built-ins (assign, raise…)
      return thing.name && !INFERRED.has(thing.name) ? clip(thing.name) : "(inline)";
    }
    if (typeof thing === "object") {
      const name = thing.name || thing.type;
      if (typeof name === "string" && name && name !== "xstate.guard") return clip(name);
      if (typeof thing.type === "string" && thing.type === "xstate.guard") {
        const name = thing.predicate && thing.predicate.name;
        return name && !INFERRED.has(name) ? clip(name) : "(inline)";
      }
      if (typeof thing.exec === "function" && thing.exec.name && !INFERRED.has(thing.exec.name)) return clip(thing.exec.name);
      return "(inline)";
    }
    return "(inline)";
  }

  function names(list) {
    if (!list) return [];
    return (Array.isArray(list) ? list : [list]).map(nameOf).filter((n) => n !== undefined);
  }

  function delayOf(delay) {
    if (typeof delay === "number") return delay;
    if (typeof delay === "string") return clip(delay);
    if (typeof delay === "function") return delay.name && !INFERRED.has(delay.name) ? clip(delay.name) : "(expression)";
    return undefined;
  }

  function kindOf(event, major) {
    if (event === "" || event === null || event === undefined) return "always";
    if (major === 5) {
      if (event.startsWith("xstate.after.")) return "after";
      if (event.startsWith("xstate.done.state.")) return "done";
      if (event.startsWith("xstate.done.actor.")) return "invoke-done";
      if (event.startsWith("xstate.error.actor.")) return "invoke-error";
      if (event.startsWith("xstate.snapshot.")) return "invoke-snapshot";
      return "on";
    }
    if (event.startsWith("xstate.after(")) return "after";
    if (event.startsWith("done.state.")) return "done";
    if (event.startsWith("done.invoke.")) return "invoke-done";
    if (event.startsWith("error.platform.")) return "invoke-error";
    return "on";
  }

  function transition(t, major) {
    const event = t.eventType === undefined || t.eventType === null ? "" : String(t.eventType);
    const out = {
      event: clip(event),
      kind: t.delay !== undefined ? "after" : kindOf(event, major),
      targets: (t.target || []).filter((n) => n && typeof n.id === "string").map((n) => n.id),
      reenter: major === 5 ? t.reenter === true : t.internal === false && !!(t.target && t.target.length),
      actions: names(t.actions),
    };
    const guard = major === 5 ? t.guard : t.cond;
    if (guard !== undefined && guard !== null) out.guard = nameOf(guard);
    if (t.delay !== undefined) out.delay = delayOf(t.delay);
    return out;
  }

  function transitionsOf(node, major) {
    if (major === 5) {
      const list = [];
      const map = node.transitions;
      if (map && typeof map.forEach === "function") map.forEach((ts) => list.push(...ts));
      list.push(...(node.always || []));
      return list.map((t) => transition(t, major));
    }
    return (node.transitions || []).map((t) => transition(t, major));
  }

  function historyTarget(node) {
    const target = node.config && node.config.target;
    if (typeof target === "string") return clip(target);
    if (Array.isArray(target) && target.every((t) => typeof t === "string")) return clip(target.join(", "));
    return undefined;
  }

  function walk(node, major, budget) {
    budget.left -= 1;
    if (budget.left < 0) throw new RangeError(`the machine has more than ${MAX_NODES} states; too large to draw`);
    const config = node.config || {};
    const out = {
      id: String(node.id),
      key: String(node.key),
      path: (node.path || []).map(String),
      type: String(node.type),
      tags: Array.from(node.tags || []).map(clip),
      // From the config: both majors add hidden send/raise and cancel actions for `after` delays.
      entry: names(config.entry !== undefined ? config.entry : config.onEntry),
      exit: names(config.exit !== undefined ? config.exit : config.onExit),
      invoke: (node.invoke || []).map((inv) => ({
        id: clip(inv.id),
        src: typeof inv.src === "string" ? clip(inv.src) : nameOf(inv.src) || "(inline)",
      })),
      transitions: [],
      states: [],
    };
    if (typeof node.description === "string" && node.description) out.description = clip(node.description);
    if (node.type === "compound") {
      if (major === 5) {
        const initial = node.initial && node.initial.target && node.initial.target[0];
        if (initial) out.initial = String(initial.key);
      } else if (typeof node.initial === "string") {
        out.initial = node.initial;
      }
    }
    if (node.type === "history") {
      out.history = node.history === "deep" ? "deep" : "shallow";
      const target = historyTarget(node);
      if (target !== undefined) out.historyTarget = target;
    } else {
      out.transitions = transitionsOf(node, major);
    }
    for (const key of Object.keys(node.states || {})) out.states.push(walk(node.states[key], major, budget));
    return out;
  }

  function of(machine, major) {
    const root = major === 5 ? machine.root : machine;
    return { major, id: String(machine.id), root: walk(root, major, { left: MAX_NODES }) };
  }

  return { of };
})();
