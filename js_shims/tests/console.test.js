// console (web/console.js). Its output goes to the host as log lines, which these tests cannot
// read; they check that every method exists and copes with awkward arguments.

test("every console method exists and returns undefined", () => {
  for (const name of ["log", "info", "debug", "trace", "warn", "error", "assert", "count", "countReset", "time",
    "timeEnd", "timeLog", "table", "dir", "group", "groupCollapsed", "groupEnd"]) {
    assertEqual(typeof console[name], "function", name);
  }
  assertEqual(console.log("hello", 1, true), undefined);
  assertEqual(console.error(new Error("boom")), undefined);
});

test("console is a non-enumerable global", () => {
  assertEqual(Object.keys(globalThis).includes("console"), false);
  assert(Object.getOwnPropertyDescriptor(globalThis, "console").writable, "writable");
});

test("awkward values do not throw", () => {
  const circular = { name: "loop" };
  circular.self = circular;
  console.log(circular);
  console.log(undefined, null, NaN, -0, 10n, Symbol("s"), () => 1, function named() {});
  console.info({ big: 1n, fn() {}, nested: { deep: [1, { x: undefined }] } });
  console.warn(new Map([[1, 2]]), new Set([1]), new Date(0), /re/g);
  console.debug(Object.create(null));
  console.log(new TypeError("with stack"));
  console.log({ toJSON() { throw new Error("toJSON failure"); } });
});

test("assert, count, time and group helpers", () => {
  console.assert(true, "not logged");
  console.assert(false, "logged", { a: 1 });
  console.assert(false);
  console.count();
  console.count("label");
  console.countReset("label");
  console.time("t");
  console.timeLog("t", "extra");
  console.timeEnd("t");
  console.timeEnd("never started");
  console.group("g");
  console.groupCollapsed();
  console.groupEnd();
  console.table([{ a: 1 }]);
  console.dir({ a: 1 });
});

test("methods work when detached from console", () => {
  const { log, error } = console;
  log("detached");
  error("detached");
  [1, 2].forEach(console.log);
});
