// structuredClone (web/structured_clone.js).

const tag = (v) => Object.prototype.toString.call(v);

test("primitives come back as they are", () => {
  for (const v of [1, -0, NaN, Infinity, "s", "", true, false, null, undefined, 12345678901234567890n]) {
    assert(Object.is(structuredClone(v), v), `primitive ${String(v)}`);
  }
});

test("plain objects and arrays are deep copies", () => {
  const src = { a: 1, b: { c: [1, 2, { d: "e" }] }, arr: [1, , 3] };
  const copy = structuredClone(src);
  assertEqual(copy, src);
  assert(copy !== src && copy.b !== src.b && copy.b.c !== src.b.c, "new objects");
  assertEqual(2 in copy.arr, true);
  assertEqual(1 in copy.arr, false, "holes stay holes");
  assertEqual(copy.arr.length, 3);
  const withExtra = [1, 2];
  withExtra.extra = "x";
  assertEqual(structuredClone(withExtra).extra, "x");
});

test("cycles and shared references are preserved", () => {
  const shared = { n: 1 };
  const src = { x: shared, y: shared, list: [shared] };
  src.self = src;
  src.list.push(src.list);
  const copy = structuredClone(src);
  assert(copy.self === copy, "self cycle");
  assert(copy.x === copy.y && copy.list[0] === copy.x, "shared object cloned once");
  assert(copy.list[1] === copy.list, "array cycle");
  assert(copy.x !== shared, "but not the original");
});

test("Date, RegExp and boxed primitives", () => {
  const d = new Date(1234567890123);
  const dc = structuredClone(d);
  assert(dc instanceof Date && dc !== d, "a new Date");
  assertEqual(dc.getTime(), 1234567890123);
  const r = /ab+c/gi;
  r.lastIndex = 3;
  const rc = structuredClone(r);
  assert(rc instanceof RegExp && rc !== r, "a new RegExp");
  assertEqual([rc.source, rc.flags, rc.lastIndex], ["ab+c", "gi", 0]);
  assertEqual(tag(structuredClone(Object(5))), "[object Number]");
  assertEqual(structuredClone(Object("s")).valueOf(), "s");
  assertEqual(structuredClone(Object(false)).valueOf(), false);
  assertEqual(structuredClone(Object(7n)).valueOf() === 7n, true);
});

test("Map and Set with object keys", () => {
  const key = { k: 1 };
  const m = new Map([[key, "v"], ["s", key]]);
  const mc = structuredClone(m);
  assert(mc instanceof Map && mc !== m, "a new Map");
  const [k2] = mc.keys();
  assertEqual(k2, { k: 1 });
  assert(k2 !== key, "keys are cloned");
  assert(mc.get("s") === k2, "identity kept inside the clone");
  const s = new Set([1, "two", key]);
  const sc = structuredClone(s);
  assert(sc instanceof Set && sc.size === 3 && sc.has(1) && sc.has("two"), "Set entries");
});

test("ArrayBuffer, typed arrays and DataView", () => {
  const buf = new ArrayBuffer(8);
  new Uint8Array(buf).set([1, 2, 3, 4, 5, 6, 7, 8]);
  const src = { buf, all: new Uint8Array(buf), part: new Uint16Array(buf, 2, 2), view: new DataView(buf, 4, 4) };
  const c = structuredClone(src);
  assert(c.buf !== buf && c.buf instanceof ArrayBuffer, "new buffer");
  assert(c.all.buffer === c.buf && c.part.buffer === c.buf && c.view.buffer === c.buf, "views share the cloned buffer");
  assertEqual(Array.from(c.all), [1, 2, 3, 4, 5, 6, 7, 8]);
  assertEqual([c.part.byteOffset, c.part.length], [2, 2]);
  assertEqual([c.view.byteOffset, c.view.byteLength, c.view.getUint8(0)], [4, 4, 5]);
  c.all[0] = 99;
  assertEqual(new Uint8Array(buf)[0], 1, "original untouched");
  for (const T of [Int8Array, Uint8ClampedArray, Int16Array, Int32Array, Uint32Array, Float32Array, Float64Array, BigInt64Array, BigUint64Array]) {
    const v = T === BigInt64Array || T === BigUint64Array ? new T([1n, 2n]) : new T([1, 2]);
    const vc = structuredClone(v);
    assertEqual(tag(vc), tag(v), T.name);
    assertEqual(String(vc[1]), "2", T.name);
  }
});

test("errors keep their type, message and cause", () => {
  const e = new TypeError("bad thing", { cause: { code: 42 } });
  const c = structuredClone(e);
  assert(c instanceof TypeError && c !== e, "a new TypeError");
  assertEqual([c.name, c.message], ["TypeError", "bad thing"]);
  assertEqual(c.cause, { code: 42 });
  assertEqual(typeof c.stack, "string");
  for (const E of [Error, EvalError, RangeError, ReferenceError, SyntaxError, URIError]) {
    assertEqual(structuredClone(new E("m")).name, E.name);
  }
  class CustomError extends Error {}
  const cc = structuredClone(new CustomError("custom"));
  assertEqual([cc.constructor === Error, cc.message], [true, "custom"]);
  const dom = structuredClone(new DOMException("gone", "AbortError"));
  assertEqual([dom instanceof DOMException, dom.name, dom.message], [true, "AbortError", "gone"]);
});

test("class instances become plain objects of their own enumerable data", () => {
  class Point {
    constructor() { this.x = 1; this.y = 2; }
    get sum() { return this.x + this.y; }
  }
  const c = structuredClone(new Point());
  assertEqual(c, { x: 1, y: 2 });
  assertEqual(Object.getPrototypeOf(c) === Object.prototype, true);
  const hidden = Object.defineProperty({ shown: 1 }, "hidden", { value: 2, enumerable: false });
  assertEqual(Object.keys(structuredClone(hidden)), ["shown"]);
  const sym = { [Symbol("s")]: 1, keep: 2 };
  assertEqual(Object.getOwnPropertySymbols(structuredClone(sym)).length, 0);
});

test("functions, symbols and objects with uncloneable internals throw DataCloneError", () => {
  const bad = [
    () => 1, function named() {}, Symbol("s"), { nested: { fn() {} } }, [Symbol.iterator],
    new WeakMap(), new WeakSet(), new WeakRef({}), Promise.resolve(1), (function* () {})(),
    new AbortController(), new URL("http://x/"), new Headers(), new TextEncoder(), Object(Symbol("boxed")),
  ];
  for (const v of bad) {
    const e = assertThrows(() => structuredClone(v), "DataCloneError");
    assert(e instanceof DOMException, "a DOMException");
    assertEqual(e.code, 25);
  }
});

test("transfer: empty list accepted, real transfers not supported", () => {
  assertEqual(structuredClone({ a: 1 }, { transfer: [] }), { a: 1 });
  assertEqual(structuredClone(1, undefined), 1);
  assertThrows(() => structuredClone(new ArrayBuffer(1), { transfer: [new ArrayBuffer(1)] }), "NotSupportedError");
  assertThrows(() => structuredClone({}, { transfer: 5 }), "TypeError");
  assertThrows(() => structuredClone(), "TypeError");
});

test("getters run once and their values are cloned", () => {
  let calls = 0;
  const src = { get v() { calls++; return { deep: true }; } };
  const c = structuredClone(src);
  assertEqual(calls, 1);
  assertEqual(Object.getOwnPropertyDescriptor(c, "v").value, { deep: true });
});
