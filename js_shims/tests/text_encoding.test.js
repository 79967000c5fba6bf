// TextEncoder and TextDecoder (web/text_encoding.js).

const bytes = (u8) => Array.from(u8);

test("TextEncoder encodes UTF-8, including astral characters", () => {
  const te = new TextEncoder();
  assertEqual(te.encoding, "utf-8");
  assertEqual(bytes(te.encode("abc")), [97, 98, 99]);
  assertEqual(bytes(te.encode("\u00e9")), [0xc3, 0xa9]);
  assertEqual(bytes(te.encode("\u20ac")), [0xe2, 0x82, 0xac]);
  assertEqual(bytes(te.encode("\ud83d\ude00")), [0xf0, 0x9f, 0x98, 0x80]);
  assertEqual(bytes(te.encode()), []);
  assert(te.encode("x") instanceof Uint8Array, "returns a Uint8Array");
});

test("TextEncoder writes lone surrogates as U+FFFD", () => {
  const te = new TextEncoder();
  assertEqual(bytes(te.encode("\ud800")), [0xef, 0xbf, 0xbd]);
  assertEqual(bytes(te.encode("a\udc00b")), [97, 0xef, 0xbf, 0xbd, 98]);
  assertEqual(bytes(te.encode("\ude00\ud83d")), [0xef, 0xbf, 0xbd, 0xef, 0xbf, 0xbd]);
});

test("encodeInto never splits a character", () => {
  const te = new TextEncoder();
  const dest = new Uint8Array(5);
  assertEqual(te.encodeInto("a\ud83d\ude00b", dest), { read: 3, written: 5 });
  assertEqual(bytes(dest), [97, 0xf0, 0x9f, 0x98, 0x80]);
  const small = new Uint8Array(3);
  assertEqual(te.encodeInto("a\ud83d\ude00", small), { read: 1, written: 1 });
  assertEqual(te.encodeInto("", new Uint8Array(0)), { read: 0, written: 0 });
  assertThrows(() => te.encodeInto("x", [0, 0]), "TypeError");
});

test("TextDecoder decodes ArrayBuffer, typed arrays, views with offsets and DataView", () => {
  const td = new TextDecoder();
  assertEqual(td.encoding, "utf-8");
  assertEqual(td.fatal, false);
  assertEqual(td.ignoreBOM, false);
  const data = new TextEncoder().encode("h\u00e9llo \ud83d\ude00");
  assertEqual(td.decode(data), "h\u00e9llo \ud83d\ude00");
  assertEqual(td.decode(data.buffer), "h\u00e9llo \ud83d\ude00");
  assertEqual(td.decode(data.subarray(1, 3)), "\u00e9");
  assertEqual(td.decode(new DataView(data.buffer, 0, 1)), "h");
  assertEqual(td.decode(new Uint16Array(new Uint8Array([0x68, 0x69]).buffer)), "hi");
  assertEqual(td.decode(), "");
  assertThrows(() => td.decode("string"), "TypeError");
});

test("invalid sequences become U+FFFD (one per maximal subpart)", () => {
  const td = new TextDecoder();
  const d = (arr) => td.decode(new Uint8Array(arr));
  assertEqual(d([0xc0, 0x80]), "\ufffd\ufffd");
  assertEqual(d([0xed, 0xa0, 0x80]), "\ufffd\ufffd\ufffd");
  assertEqual(d([0xf0, 0x9f, 0x98]), "\ufffd");
  assertEqual(d([0xe2, 0x82, 0x41]), "\ufffdA");
  assertEqual(d([0xff, 0x41, 0x80]), "\ufffdA\ufffd");
  assertEqual(d([0xf4, 0x90, 0x80, 0x80]), "\ufffd\ufffd\ufffd\ufffd");
});

test("fatal mode throws a TypeError on invalid input", () => {
  const td = new TextDecoder("utf-8", { fatal: true });
  assertEqual(td.fatal, true);
  assertEqual(td.decode(new Uint8Array([0x61])), "a");
  assertThrows(() => td.decode(new Uint8Array([0xc3])), "TypeError");
  assertThrows(() => td.decode(new Uint8Array([0xff])), "TypeError");
});

test("a leading BOM is removed unless ignoreBOM is set", () => {
  const withBom = new Uint8Array([0xef, 0xbb, 0xbf, 0x68, 0x69]);
  assertEqual(new TextDecoder().decode(withBom), "hi");
  assertEqual(new TextDecoder("utf-8", { ignoreBOM: true }).decode(withBom), "\ufeffhi");
  assertEqual(new TextDecoder().decode(new Uint8Array([0x68, 0xef, 0xbb, 0xbf])), "h\ufeff");
});

test("streaming decode joins characters split across chunks", () => {
  const td = new TextDecoder();
  const all = new TextEncoder().encode("\u20ac\ud83d\ude00");
  let out = "";
  for (let i = 0; i < all.length; i++) out += td.decode(all.subarray(i, i + 1), { stream: true });
  out += td.decode();
  assertEqual(out, "\u20ac\ud83d\ude00");
  const td2 = new TextDecoder();
  assertEqual(td2.decode(new Uint8Array([0xe2, 0x82]), { stream: true }), "");
  assertEqual(td2.decode(), "\ufffd", "an incomplete sequence at the end is replaced");
});

test("encoding labels: utf-8 aliases work, other encodings are a RangeError", () => {
  assertEqual(new TextDecoder("UTF8").encoding, "utf-8");
  assertEqual(new TextDecoder(" unicode-1-1-utf-8 ").encoding, "utf-8");
  assertThrows(() => new TextDecoder("latin1"), "RangeError");
  assertThrows(() => new TextDecoder("utf-16le"), "RangeError");
  assertThrows(() => new TextDecoder("no-such-encoding"), "RangeError");
});

test("round trip of a long mixed string", () => {
  const s = "a\u00e9\u4e2d\ud83d\ude00".repeat(5000);
  const back = new TextDecoder().decode(new TextEncoder().encode(s));
  assertEqual(back.length, s.length);
  assert(back === s, "round trip");
});
