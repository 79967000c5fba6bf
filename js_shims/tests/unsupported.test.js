// Globals that exist only to fail clearly (web/unsupported.js).

const CONSTRUCTORS = [
  "FormData", "Blob", "File", "ReadableStream", "WritableStream", "TransformStream", "CompressionStream",
  "DecompressionStream", "WebSocket", "XMLHttpRequest",
];
const NAMESPACES = ["WebAssembly", "Intl"];

test("typeof probes work and do not throw", () => {
  for (const name of CONSTRUCTORS) assertEqual(typeof globalThis[name], "function", name);
  for (const name of NAMESPACES) assertEqual(typeof globalThis[name], "object", name);
  assertEqual(typeof Blob, "function");
  assertEqual(typeof Intl, "object");
  assertEqual(typeof Deno, "undefined");
  assertEqual("Deno" in globalThis, false);
});

test("the stand-ins are not enumerable globals", () => {
  const keys = Object.keys(globalThis);
  for (const name of CONSTRUCTORS.concat(NAMESPACES)) assertEqual(keys.includes(name), false, name);
});

test("constructing or calling an unsupported constructor throws NotSupportedError naming it", () => {
  for (const name of CONSTRUCTORS) {
    const Ctor = globalThis[name];
    const e = assertThrows(() => new Ctor(), "NotSupportedError");
    assertEqual(e.message, `${name} is not supported in the statehost sandbox`);
    assert(e instanceof Error, "an Error");
    assertThrows(() => Ctor(), "NotSupportedError");
  }
  assertThrows(() => new WebSocket("wss://example.com"), "NotSupportedError");
  assertThrows(() => new Blob(["x"], { type: "text/plain" }), "NotSupportedError");
});

test("instanceof checks against them are simply false", () => {
  for (const name of CONSTRUCTORS) {
    assertEqual({} instanceof globalThis[name], false, name);
    assertEqual(new Uint8Array(1) instanceof globalThis[name], false, name);
  }
  assertEqual(typeof Blob.prototype, "object");
  assertEqual(Blob.name, "Blob");
});

test("static members of unsupported constructors throw NotSupportedError", () => {
  const e = assertThrows(() => ReadableStream.from([1]), "NotSupportedError");
  assertEqual(e.message, "ReadableStream.from is not supported in the statehost sandbox");
});

test("any use of WebAssembly or Intl throws NotSupportedError naming the member", () => {
  const e1 = assertThrows(() => WebAssembly.instantiate(new Uint8Array(8)), "NotSupportedError");
  assertEqual(e1.message, "WebAssembly.instantiate is not supported in the statehost sandbox");
  const e2 = assertThrows(() => new Intl.DateTimeFormat("en-US"), "NotSupportedError");
  assertEqual(e2.message, "Intl.DateTimeFormat is not supported in the statehost sandbox");
  assertThrows(() => Intl.NumberFormat, "NotSupportedError");
  assertThrows(() => "Collator" in Intl, "NotSupportedError");
  assertThrows(() => Object.keys(WebAssembly), "NotSupportedError");
  assertThrows(() => { Intl.x = 1; }, "NotSupportedError");
  assertEqual(Object.prototype.toString.call(Intl), "[object Intl]");
});
