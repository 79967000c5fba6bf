// AbortController, AbortSignal, Event and EventTarget (web/abort.js).

test("a new controller's signal is not aborted", () => {
  const c = new AbortController();
  assert(c.signal instanceof AbortSignal, "signal is an AbortSignal");
  assert(c.signal instanceof EventTarget, "AbortSignal extends EventTarget");
  assertEqual(c.signal.aborted, false);
  assertEqual(c.signal.reason, undefined);
  assert(c.signal === c.signal, "the same signal every time");
  assertEqual(Object.prototype.toString.call(c.signal), "[object AbortSignal]");
  assertEqual(Object.prototype.toString.call(c), "[object AbortController]");
});

test("abort() without a reason uses an AbortError DOMException", () => {
  const c = new AbortController();
  c.abort();
  assertEqual(c.signal.aborted, true);
  assert(c.signal.reason instanceof DOMException, "reason is a DOMException");
  assertEqual(c.signal.reason.name, "AbortError");
  assertEqual(c.signal.reason.code, 20);
});

test("abort(reason) keeps the reason as given; a second abort changes nothing", () => {
  const c = new AbortController();
  const reason = { why: "cancelled" };
  c.abort(reason);
  c.abort("later");
  assert(c.signal.reason === reason, "first reason kept");
});

test("abort listeners run once, synchronously, in order, with the signal as target", () => {
  const c = new AbortController();
  const seen = [];
  c.signal.addEventListener("abort", function (e) {
    seen.push(["first", e.type, e.target === c.signal, this === c.signal, e.currentTarget === c.signal]);
  });
  c.signal.addEventListener("abort", () => seen.push(["second"]));
  c.abort();
  c.abort();
  assertEqual(seen, [["first", "abort", true, true, true], ["second"]]);
});

test("onabort is called and can be replaced or cleared", () => {
  const c = new AbortController();
  const seen = [];
  c.signal.onabort = () => seen.push("old");
  c.signal.onabort = (e) => seen.push("new:" + e.type);
  assertEqual(typeof c.signal.onabort, "function");
  c.abort();
  assertEqual(seen, ["new:abort"]);
  const d = new AbortController();
  d.signal.onabort = () => seen.push("cleared");
  d.signal.onabort = null;
  assertEqual(d.signal.onabort, null);
  d.abort();
  assertEqual(seen, ["new:abort"]);
});

test("removeEventListener, duplicate registrations and the once option", () => {
  const c = new AbortController();
  let n = 0;
  const inc = () => n++;
  c.signal.addEventListener("abort", inc);
  c.signal.addEventListener("abort", inc);  // same listener: registered once
  const removed = () => { n += 100; };
  c.signal.addEventListener("abort", removed);
  c.signal.removeEventListener("abort", removed);
  c.abort();
  assertEqual(n, 1);

  const t = new EventTarget();
  let m = 0;
  t.addEventListener("ping", () => m++, { once: true });
  t.dispatchEvent(new Event("ping"));
  t.dispatchEvent(new Event("ping"));
  assertEqual(m, 1);
});

test("a throwing listener does not stop the others", () => {
  const c = new AbortController();
  let ran = false;
  c.signal.addEventListener("abort", () => { throw new Error("listener failure"); });
  c.signal.addEventListener("abort", () => { ran = true; });
  c.abort();
  assert(ran, "second listener ran");
});

test("throwIfAborted throws the reason only once aborted", () => {
  const c = new AbortController();
  c.signal.throwIfAborted();
  c.abort(new RangeError("stop"));
  assertThrows(() => c.signal.throwIfAborted(), "RangeError");
});

test("AbortSignal.abort() is born aborted", () => {
  const s = AbortSignal.abort();
  assertEqual(s.aborted, true);
  assertEqual(s.reason.name, "AbortError");
  assertEqual(AbortSignal.abort("why").reason, "why");
  assertThrows(() => AbortSignal.abort().throwIfAborted(), "AbortError");
});

test("AbortSignal cannot be constructed directly", () => {
  assertThrows(() => new AbortSignal(), "TypeError");
});

test("AbortSignal.timeout returns a pending signal and validates ms", () => {
  const s = AbortSignal.timeout(1000);
  assert(s instanceof AbortSignal, "an AbortSignal");
  assertEqual(s.aborted, false);
  assertThrows(() => AbortSignal.timeout(-1), "TypeError");
  assertThrows(() => AbortSignal.timeout(Infinity), "TypeError");
});

test("AbortSignal.any follows the first source to abort", () => {
  const a = new AbortController();
  const b = new AbortController();
  const any = AbortSignal.any([a.signal, b.signal]);
  const nested = AbortSignal.any([any]);
  const seen = [];
  any.addEventListener("abort", () => seen.push("any"));
  nested.addEventListener("abort", () => seen.push("nested"));
  assertEqual(any.aborted, false);
  b.abort("b first");
  a.abort("a second");
  assertEqual(any.aborted, true);
  assertEqual(any.reason, "b first");
  assertEqual(nested.aborted, true);
  assertEqual(nested.reason, "b first");
  assertEqual(seen, ["any", "nested"]);
});

test("AbortSignal.any of an already aborted signal is aborted at once", () => {
  const s = AbortSignal.any([new AbortController().signal, AbortSignal.abort("done")]);
  assertEqual(s.aborted, true);
  assertEqual(s.reason, "done");
  assertEqual(AbortSignal.any([]).aborted, false);
  assertThrows(() => AbortSignal.any([{}]), "TypeError");
});

test("addEventListener's signal option removes the listener", () => {
  const target = new EventTarget();
  const c = new AbortController();
  let n = 0;
  target.addEventListener("x", () => n++, { signal: c.signal });
  target.dispatchEvent(new Event("x"));
  c.abort();
  target.dispatchEvent(new Event("x"));
  assertEqual(n, 1);
});

test("Event and EventTarget basics", () => {
  const e = new Event("custom", { cancelable: true, bubbles: true });
  assertEqual([e.type, e.cancelable, e.bubbles, e.defaultPrevented, e.isTrusted, e.target], ["custom", true, true, false, false, null]);
  const t = new EventTarget();
  t.addEventListener("custom", (ev) => ev.preventDefault());
  t.addEventListener("custom", { handleEvent(ev) { ev.handled = true; } });
  assertEqual(t.dispatchEvent(e), false);
  assertEqual(e.defaultPrevented, true);
  assertEqual(e.handled, true);
  assertEqual(e.target === t, true);
  const plain = new Event("plain");
  plain.preventDefault();
  assertEqual(plain.defaultPrevented, false, "not cancelable");
  assertThrows(() => new Event(), "TypeError");
  assertThrows(() => t.dispatchEvent({ type: "x" }), "TypeError");
});

test("stopImmediatePropagation stops the remaining listeners", () => {
  const t = new EventTarget();
  const seen = [];
  t.addEventListener("x", (e) => { seen.push(1); e.stopImmediatePropagation(); });
  t.addEventListener("x", () => seen.push(2));
  t.dispatchEvent(new Event("x"));
  assertEqual(seen, [1]);
});

test("a promise can be cancelled through its signal (what XState's fromPromise does)", async () => {
  const c = new AbortController();
  const work = new Promise((resolve, reject) => {
    c.signal.addEventListener("abort", () => reject(c.signal.reason));
  });
  queueMicrotask(() => c.abort());
  await assertRejects(work, "AbortError");
});
