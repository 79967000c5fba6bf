// web/console.js: console.* captured as log lines of the step (log/info/debug -> stdout,
// warn/error -> stderr). Nothing is printed by the guest; the host stores the lines with the step.

(() => {
  function format(value, depth) {
    if (typeof value === "string") return value;
    if (value instanceof Error) return value.stack ? `${value.name}: ${value.message}\n${value.stack}` : `${value.name}: ${value.message}`;
    if (typeof value === "function") return `[Function ${value.name || "anonymous"}]`;
    if (typeof value === "symbol" || typeof value === "bigint") return String(value);
    if (value === undefined) return "undefined";
    try {
      const seen = new WeakSet();
      return JSON.stringify(value, (k, v) => {
        if (typeof v === "bigint") return `${v}n`;
        if (typeof v === "function") return `[Function ${v.name || "anonymous"}]`;
        if (v && typeof v === "object") {
          if (seen.has(v)) return "[Circular]";
          seen.add(v);
        }
        return v;
      }) ?? String(value);
    } catch (e) {
      return String(value);
    }
  }

  function line(args) {
    return Array.prototype.map.call(args, (a) => format(a, 0)).join(" ");
  }

  const counts = new Map();
  const timings = new Map();
  const out = (level) => function () { H.log("stdout", level, line(arguments)); };
  const err = (level) => function () { H.log("stderr", level, line(arguments)); };
  const console = {
    log: out("log"),
    info: out("info"),
    debug: out("debug"),
    trace: out("trace"),
    warn: err("warn"),
    error: err("error"),
    assert(condition, ...rest) {
      if (!condition) H.log("stderr", "error", "Assertion failed" + (rest.length ? ": " + line(rest) : ""));
    },
    count(label = "default") {
      const n = (counts.get(label) || 0) + 1;
      counts.set(label, n);
      H.log("stdout", "log", `${label}: ${n}`);
    },
    countReset(label = "default") { counts.delete(label); },
    time(label = "default") { timings.set(label, H.now()); },
    timeEnd(label = "default") {
      const start = timings.get(label);
      timings.delete(label);
      H.log("stdout", "log", `${label}: ${start === undefined ? 0 : H.now() - start}ms`);
    },
    timeLog(label = "default", ...rest) {
      const start = timings.get(label);
      H.log("stdout", "log", `${label}: ${start === undefined ? 0 : H.now() - start}ms` + (rest.length ? " " + line(rest) : ""));
    },
    table(data) { H.log("stdout", "log", line([data])); },
    dir(data) { H.log("stdout", "log", line([data])); },
    group(...rest) { if (rest.length) H.log("stdout", "log", line(rest)); },
    groupCollapsed(...rest) { if (rest.length) H.log("stdout", "log", line(rest)); },
    groupEnd() {},
  };
  Object.defineProperty(globalThis, "console", { value: console, writable: true, configurable: true, enumerable: false });
})();
