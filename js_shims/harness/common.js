// harness/common.js: what both XState majors' drivers share: the recorder of one guest entry's
// results, authorizer calls, fault descriptions, and the major-version probe.

const Common = (() => {
  const CUT_OFF = {
    name: "ServiceCutOff",
    message: "the service was still running when its instance was last committed (settle window ended or the server restarted); it was not re-run",
  };

  function describeFault(err) {
    if (err && typeof err === "object") {
      const name = String(err.name || "Error");
      const message = String(err.message === undefined ? err : err.message);
      const stack = typeof err.stack === "string" ? err.stack : undefined;
      const isStack = name === "RangeError" && /call stack/i.test(message);
      return { kind: isStack ? "stack" : "error", name, message, stack };
    }
    if (err === null) {
      // QuickJS throws null when it cannot even allocate its "out of memory" error.
      return { kind: "memory", name: "InternalError", message: "null was thrown, which QuickJS does when it runs out of memory" };
    }
    return { kind: "error", name: "Error", message: `a non-Error value was thrown: ${String(err)}` };
  }

  function publicOf(context) {
    const pub = context && typeof context === "object" ? context.public : undefined;
    return pub && typeof pub === "object" && !Array.isArray(pub) ? pub : {};
  }

  function toEvent(event) {
    return typeof event === "string" ? { type: event } : event;
  }

  // One entry's results, drained by collect().
  function createRecorder() {
    return {
      transitions: [],
      timers: [],
      fault: null,
      transition(t) {
        this.transitions.push(t);
      },
      timer(op) {
        this.timers.push(op);
      },
      setFault(err) {
        if (!this.fault) this.fault = describeFault(err);
      },
      drain() {
        const out = { transitions: this.transitions, timers: this.timers, fault: this.fault };
        this.transitions = [];
        this.timers = [];
        return out;
      },
    };
  }

  // Authorizers are synchronous and return booleans; a throw, a non-boolean or a Promise is a denial,
  // logged to stderr (wire-api 7.2).
  function authorize(fn, name, arg) {
    let result;
    try {
      result = fn(arg);
    } catch (err) {
      const f = describeFault(err);
      H.log("stderr", "error", `${name} threw, treated as a denial: ${f.name}: ${f.message}`);
      return false;
    }
    if (result === true) return true;
    if (result !== false) {
      const what = result && typeof result.then === "function" ? "a Promise (authorizers must be synchronous)" : `a ${typeof result}`;
      H.log("stderr", "error", `${name} returned ${what}, treated as a denial`);
    }
    return false;
  }

  // Which XState major made this machine (runtime-semantics 12.6). Probes with typeof/in only:
  // reading v4's initialState getter would run the machine's assigns.
  function probeMajor(m) {
    if (!m || (typeof m !== "object" && typeof m !== "function")) return null;
    if (typeof m.getInitialSnapshot === "function" && typeof m.getPersistedSnapshot === "function" && typeof m.restoreSnapshot === "function") {
      return 5;
    }
    if (m.__xstatenode === true && typeof m.withContext === "function" && m.machine === m) return 4;
    return null;
  }

  function jsonSafe(value, what) {
    try {
      const text = H.stringify(value);
      return text === undefined ? null : H.parse(text);
    } catch (err) {
      throw new TypeError(`${what} is not JSON-serializable: ${describeFault(err).message}`);
    }
  }

  return { CUT_OFF, describeFault, publicOf, toEvent, createRecorder, authorize, probeMajor, jsonSafe };
})();
