// In-sandbox test harness, evaluated after the prelude and before each *.test.js file by
// tests/js/test_in_sandbox.py. Test files call test(name, fn); fn may be async.
(() => {
  const cases = [];
  const json = (v) => {
    try {
      return JSON.stringify(v);
    } catch (e) {
      return String(v);
    }
  };
  const define = (name, value) =>
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });

  define("test", (name, fn) => cases.push({ name, fn }));
  define("assert", (cond, message) => {
    if (!cond) throw new Error(`assertion failed: ${message || "(no message)"}`);
  });
  define("assertEqual", (actual, expected, message) => {
    const a = json(actual);
    const e = json(expected);
    if (a !== e) throw new Error(`${message || "assertEqual"}: expected ${e}, got ${a}`);
  });
  define("assertThrows", (fn, name) => {
    try {
      fn();
    } catch (err) {
      if (name && (!err || err.name !== name)) throw new Error(`expected ${name}, got ${err && err.name}: ${err && err.message}`);
      return err;
    }
    throw new Error(`expected ${name || "an exception"}, nothing was thrown`);
  });
  define("assertRejects", async (promiseOrFn, name) => {
    try {
      await (typeof promiseOrFn === "function" ? promiseOrFn() : promiseOrFn);
    } catch (err) {
      if (name && (!err || err.name !== name)) throw new Error(`expected rejection ${name}, got ${err && err.name}: ${err && err.message}`);
      return err;
    }
    throw new Error(`expected rejection ${name || ""}, the promise resolved`);
  });
  define("__statehost_test_results", null);
  define("__statehost_run_tests", async () => {
    const results = [];
    for (const c of cases) {
      try {
        await c.fn();
        results.push({ name: c.name, ok: true });
      } catch (err) {
        results.push({ name: c.name, ok: false, error: err && err.stack ? `${err.name}: ${err.message}\n${err.stack}` : String(err) });
      }
    }
    globalThis.__statehost_test_results = results;
  });
})();
