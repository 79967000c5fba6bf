// setTimeout and friends (web/timers.js). Time does not advance while these run, so only the
// synchronous behaviour is checked: ids, clearing, argument checks, and that nothing runs early.

test("the timer functions exist as non-enumerable globals", () => {
  for (const name of ["setTimeout", "setInterval", "clearTimeout", "clearInterval", "setImmediate", "clearImmediate"]) {
    assertEqual(typeof globalThis[name], "function", name);
    assertEqual(Object.keys(globalThis).includes(name), false, name);
  }
});

test("ids are distinct positive numbers", () => {
  const ids = [setTimeout(() => {}, 10), setTimeout(() => {}, 0), setInterval(() => {}, 5), setImmediate(() => {})];
  for (const id of ids) assert(typeof id === "number" && id > 0, `id ${id}`);
  assertEqual(new Set(ids).size, ids.length);
  ids.forEach((id) => clearTimeout(id));
});

test("callbacks never run synchronously", () => {
  let ran = false;
  const ids = [
    setTimeout(() => { ran = true; }, 0),
    setTimeout(() => { ran = true; }),
    setImmediate(() => { ran = true; }),
    setInterval(() => { ran = true; }, 0),
  ];
  assertEqual(ran, false);
  ids.forEach((id) => clearTimeout(id));
});

test("clearing accepts undefined, null, unknown and already cleared ids", () => {
  clearTimeout(undefined);
  clearTimeout(null);
  clearTimeout(123456789);
  clearInterval("nonsense");
  const id = setTimeout(() => {}, 1);
  clearTimeout(id);
  clearTimeout(id);
  clearImmediate(setImmediate(() => {}));
});

test("strings are not evaluated: non-function callbacks are a TypeError", () => {
  assertThrows(() => setTimeout("globalThis.evil = 1", 0), "TypeError");
  assertThrows(() => setInterval("x", 0), "TypeError");
  assertThrows(() => setTimeout(undefined, 0), "TypeError");
  assertThrows(() => setImmediate(null), "TypeError");
  assertEqual(globalThis.evil, undefined);
});

test("odd delays are accepted", () => {
  for (const delay of [undefined, -5, NaN, "10", 1.5, Infinity]) clearTimeout(setTimeout(() => {}, delay));
});
