// statebacked/rt.js: the runtime hook of @statebacked/machine (wire-api 7.6), under both its names
// (0.6.0 looks up the misspelled `__statebaked_rt`).
//
// spawn(entity, nameOrOptions) serves two functions of the machine library:
// - spawnEphemeralInstance(logic, name): a bundle that inlines its own XState copy cannot use its
//   copy's `spawn` (it looks for a running interpreter in its own copy), so the runtime copy's
//   `spawn` is used instead. XState 4 only: v5 spawns through assign's `spawn` argument.
// - spawnPersistentInstance(descriptor, opts): persistent child instances are full instances of the
//   server; they are not available yet and the call fails with a named error.

const StatebackedRt = (() => {
  let M = null;

  function isPersistentDescriptor(entity) {
    return entity && typeof entity === "object" && typeof entity.machineName === "string" && entity.__xstatenode !== true;
  }

  const rt = {
    spawn(entity, nameOrOptions) {
      if (isPersistentDescriptor(entity)) {
        throw new H.NotSupportedError("spawnPersistentInstance (persistent child instances)");
      }
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
    attach(m) {
      M = m;
    },
  };
})();
