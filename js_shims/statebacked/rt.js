// statebacked/rt.js: the runtime hook of @statebacked/machine (wire-api 7.6), under both its names
// (0.6.0 looks up the misspelled `__statebaked_rt`).
//
// spawn(entity, nameOrOptions) serves two functions of the machine library:
// - spawnEphemeralInstance(logic, name): a bundle that inlines its own XState copy cannot use its
//   copy's `spawn` (it looks for a running interpreter in its own copy), so the runtime copy's
//   `spawn` is used instead. XState 4 only: v5 spawns through assign's `spawn` argument.
// - spawnPersistentInstance(descriptor, opts): a persistent child is a full instance of the server.
//   The call returns the reference the library documents and records a spawn message, which the
//   host creates after the round commits (durably queued and retried, like a delayed event).

const StatebackedRt = (() => {
  let M = null;
  let rec = null;
  // References spawned in this sandbox by id: an entry action may send to one that the transition's
  // assign just created, before the context holding it is the interpreter's state.
  let spawned = new Map();

  function spawnPersistent(descriptor, opts) {
    if (!rec) throw new Error("statehost: spawnPersistentInstance was called outside of a transition");
    const options = opts && typeof opts === "object" ? opts : {};
    const ref = {
      type: "statebacked.instance",
      id: options.name === undefined ? crypto.randomUUID() : String(options.name),
      machineName: descriptor.machineName,
      machineInstanceName: descriptor.machineInstanceName === undefined ? crypto.randomUUID() : String(descriptor.machineInstanceName),
    };
    if (descriptor.machineVersionId !== undefined) ref.machineVersionId = String(descriptor.machineVersionId);
    const target = { machineName: ref.machineName, machineInstanceName: ref.machineInstanceName, kind: "spawn" };
    if (ref.machineVersionId !== undefined) target.machineVersionId = ref.machineVersionId;
    if (options.context !== undefined) target.context = Common.jsonSafe(options.context, "a persistent child's context");
    rec.timer({ op: "set", id: null, delayMs: 0, event: { type: "statebacked.spawn" }, target });
    spawned.set(ref.id, ref);
    return ref;
  }

  function isPersistentDescriptor(entity) {
    return entity && typeof entity === "object" && typeof entity.machineName === "string" && entity.__xstatenode !== true;
  }

  const rt = {
    spawn(entity, nameOrOptions) {
      if (isPersistentDescriptor(entity)) return spawnPersistent(entity, nameOrOptions);
      if (!M) throw new Error("statehost: the runtime hook was used before the machine was loaded");
      if (M.major !== 4 || typeof M.api.spawn !== "function") {
        throw new H.NotSupportedError("__statebacked_rt.spawn with XState 5 (use the spawn argument of assign)");
      }
      return M.api.spawn(entity, nameOrOptions);
    },
  };
  Object.freeze(rt);

  for (const name of ["__statebacked_rt", "__statebaked_rt"]) {
    Object.defineProperty(globalThis, name, { value: rt, writable: false, configurable: false, enumerable: false });
  }

  return {
    attach(m, recorder) {
      M = m;
      rec = recorder;
    },
    // A live actor sharing the VM (harness/entry.js): its own recorder and spawned references.
    use(recorder, spawnedRefs) {
      rec = recorder;
      spawned = spawnedRefs;
    },
    spawnedMap() {
      return spawned;
    },
    spawnedRef(id) {
      return spawned.get(id) || null;
    },
    // A reference to a persistent instance, as spawnPersistentInstance returns and sendTo takes.
    isInstanceRef(value) {
      return Boolean(value && typeof value === "object" && value.type === "statebacked.instance" && typeof value.machineName === "string" && typeof value.machineInstanceName === "string");
    },
  };
})();
