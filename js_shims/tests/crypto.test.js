// crypto: getRandomValues, randomUUID and crypto.subtle (web/crypto.js). Digests and HMACs are
// computed by the host, so these are checked against published test vectors.

const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
const utf8 = (s) => new TextEncoder().encode(s);

test("the globals exist and cannot be constructed", () => {
  assertEqual(typeof crypto, "object");
  assert(crypto.subtle instanceof SubtleCrypto, "crypto.subtle is a SubtleCrypto");
  assert(crypto.subtle === crypto.subtle, "the same object every time");
  assertThrows(() => new CryptoKey(), "TypeError");
  assertThrows(() => new SubtleCrypto(), "TypeError");
  assertEqual(Object.prototype.toString.call(crypto.subtle), "[object SubtleCrypto]");
});

test("getRandomValues fills integer typed arrays in place", () => {
  const a = new Uint8Array(64);
  assert(crypto.getRandomValues(a) === a, "returns its argument");
  assert(a.some((x) => x !== 0), "not all zero");
  const b = new Uint32Array(16);
  crypto.getRandomValues(b);
  assert(b.some((x) => x !== 0), "Uint32Array filled");
  crypto.getRandomValues(new BigUint64Array(2));
  crypto.getRandomValues(new Int16Array(3));
  crypto.getRandomValues(new Uint8ClampedArray(3));
  const whole = new Uint8Array(8);
  crypto.getRandomValues(whole.subarray(2, 4));
  assertEqual([whole[0], whole[1], whole[4], whole[7]], [0, 0, 0, 0], "only the view is written");
  assertEqual(crypto.getRandomValues(new Uint8Array(65536)).length, 65536);
});

test("getRandomValues rejects float arrays, DataView, non-views and more than 65536 bytes", () => {
  assertThrows(() => crypto.getRandomValues(new Float64Array(2)), "TypeMismatchError");
  assertThrows(() => crypto.getRandomValues(new Float32Array(2)), "TypeMismatchError");
  assertThrows(() => crypto.getRandomValues(new DataView(new ArrayBuffer(4))), "TypeMismatchError");
  assertThrows(() => crypto.getRandomValues([1, 2, 3]), "TypeError");
  assertThrows(() => crypto.getRandomValues(new ArrayBuffer(4)), "TypeError");
  const e = assertThrows(() => crypto.getRandomValues(new Uint8Array(65537)), "QuotaExceededError");
  assert(e instanceof DOMException, "a DOMException");
});

test("randomUUID gives distinct version 4 UUIDs", () => {
  const seen = new Set();
  for (let i = 0; i < 50; i++) {
    const id = crypto.randomUUID();
    assert(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(id), id);
    seen.add(id);
  }
  assertEqual(seen.size, 50);
});

test("digest: SHA-1, SHA-256, SHA-384, SHA-512 of 'abc'", async () => {
  const abc = utf8("abc");
  assertEqual(hex(await crypto.subtle.digest("SHA-1", abc)), "a9993e364706816aba3e25717850c26c9cd0d89d");
  assertEqual(hex(await crypto.subtle.digest("SHA-256", abc)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  assertEqual(hex(await crypto.subtle.digest({ name: "SHA-384" }, abc)),
    "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7");
  assertEqual(hex(await crypto.subtle.digest("sha-512", abc.buffer)),
    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f");
});

test("digest returns an ArrayBuffer and accepts any view", async () => {
  const empty = await crypto.subtle.digest("SHA-256", new Uint8Array(0));
  assert(empty instanceof ArrayBuffer, "an ArrayBuffer");
  assertEqual(empty.byteLength, 32);
  assertEqual(hex(empty), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  const padded = utf8("xxabcxx");
  assertEqual(hex(await crypto.subtle.digest("SHA-256", new DataView(padded.buffer, 2, 3))),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
});

test("digest rejects unknown algorithms and bad data asynchronously", async () => {
  const p = crypto.subtle.digest("MD5", utf8("x"));
  assert(p instanceof Promise, "a promise, not a throw");
  await assertRejects(p, "NotSupportedError");
  await assertRejects(crypto.subtle.digest("SHA-256", "a string"), "TypeError");
  await assertRejects(crypto.subtle.digest(42, utf8("x")), "NotSupportedError");
});

test("HMAC sign with imported raw keys: RFC 4231 / RFC 2202 test case 2", async () => {
  const data = utf8("what do ya want for nothing?");
  const expected = {
    "SHA-1": "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
    "SHA-256": "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    "SHA-384": "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
    "SHA-512": "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
  };
  for (const hash of Object.keys(expected)) {
    const key = await crypto.subtle.importKey("raw", utf8("Jefe"), { name: "HMAC", hash }, false, ["sign", "verify"]);
    const sig = await crypto.subtle.sign("HMAC", key, data);
    assert(sig instanceof ArrayBuffer, "an ArrayBuffer");
    assertEqual(hex(sig), expected[hash], hash);
  }
});

test("HMAC RFC 4231 test case 1 with hash given as an object", async () => {
  const key = await crypto.subtle.importKey("raw", new Uint8Array(20).fill(0x0b), { name: "hmac", hash: { name: "SHA-256" } }, true, ["sign"]);
  assertEqual(hex(await crypto.subtle.sign({ name: "HMAC" }, key, utf8("Hi There"))),
    "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
});

test("CryptoKey properties", async () => {
  const key = await crypto.subtle.importKey("raw", utf8("Jefe"), { name: "HMAC", hash: "SHA-256" }, true, ["verify", "sign"]);
  assert(key instanceof CryptoKey, "a CryptoKey");
  assertEqual(key.type, "secret");
  assertEqual(key.extractable, true);
  assertEqual(key.algorithm, { name: "HMAC", hash: { name: "SHA-256" }, length: 32 });
  assertEqual(key.usages.slice().sort(), ["sign", "verify"]);
  assertEqual(Object.keys(key), []);
  assertEqual(JSON.stringify(key), "{}");
  assertEqual(Object.prototype.toString.call(key), "[object CryptoKey]");
});

test("the key bytes are not reachable from the key object", async () => {
  const secret = utf8("top secret key bytes");
  const key = await crypto.subtle.importKey("raw", secret, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const found = [];
  const visit = (o, depth) => {
    if (o === null || typeof o !== "object" || depth > 3) return;
    for (const k of Reflect.ownKeys(o)) {
      const v = o[k];
      if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer) found.push(String(k));
      visit(v, depth + 1);
    }
  };
  visit(key, 0);
  for (const name of ["type", "algorithm", "usages", "extractable"]) visit(key[name], 0);
  assertEqual(found, []);
  secret.fill(0);  // the key took its own copy
  const sig = await crypto.subtle.sign("HMAC", key, utf8("x"));
  const again = await crypto.subtle.importKey("raw", utf8("top secret key bytes"), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  assertEqual(hex(sig), hex(await crypto.subtle.sign("HMAC", again, utf8("x"))));
  await assertRejects(crypto.subtle.exportKey("raw", key), "InvalidAccessError");
});

test("exportKey raw and jwk, and importing the jwk back", async () => {
  const key = await crypto.subtle.importKey("raw", utf8("Jefe"), { name: "HMAC", hash: "SHA-256" }, true, ["sign", "verify"]);
  const raw = await crypto.subtle.exportKey("raw", key);
  assert(raw instanceof ArrayBuffer, "raw is an ArrayBuffer");
  assertEqual(new TextDecoder().decode(raw), "Jefe");
  const jwk = await crypto.subtle.exportKey("jwk", key);
  assertEqual([jwk.kty, jwk.k, jwk.alg, jwk.ext, jwk.key_ops], ["oct", "SmVmZQ", "HS256", true, ["sign", "verify"]]);
  const back = await crypto.subtle.importKey("jwk", jwk, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  assertEqual(hex(await crypto.subtle.sign("HMAC", back, utf8("what do ya want for nothing?"))),
    "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  await assertRejects(crypto.subtle.importKey("jwk", { kty: "oct", k: "SmVmZQ", alg: "HS512" }, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]), "DataError");
  await assertRejects(crypto.subtle.importKey("jwk", { kty: "RSA", k: "SmVmZQ" }, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]), "DataError");
  await assertRejects(crypto.subtle.importKey("jwk", { kty: "oct", k: "SmVmZQ", ext: false }, { name: "HMAC", hash: "SHA-256" }, true, ["sign"]), "DataError");
});

test("generateKey makes random HMAC keys of the hash's block size", async () => {
  const k1 = await crypto.subtle.generateKey({ name: "HMAC", hash: "SHA-256" }, true, ["sign", "verify"]);
  const k2 = await crypto.subtle.generateKey({ name: "HMAC", hash: "SHA-512" }, true, ["sign"]);
  const k3 = await crypto.subtle.generateKey({ name: "HMAC", hash: "SHA-256", length: 128 }, true, ["sign"]);
  assertEqual((await crypto.subtle.exportKey("raw", k1)).byteLength, 64);
  assertEqual(k1.algorithm.length, 512);
  assertEqual((await crypto.subtle.exportKey("raw", k2)).byteLength, 128);
  assertEqual((await crypto.subtle.exportKey("raw", k3)).byteLength, 16);
  const a = hex(await crypto.subtle.exportKey("raw", k1));
  const b = hex(await crypto.subtle.exportKey("raw", await crypto.subtle.generateKey({ name: "HMAC", hash: "SHA-256" }, true, ["sign"])));
  assert(a !== b, "two keys differ");
});

test("verify accepts the right signature and rejects others", async () => {
  const key = await crypto.subtle.importKey("raw", utf8("Jefe"), { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
  const data = utf8("what do ya want for nothing?");
  const sig = new Uint8Array(await crypto.subtle.sign("HMAC", key, data));
  assertEqual(await crypto.subtle.verify("HMAC", key, sig, data), true);
  const flipped = sig.slice();
  flipped[31] ^= 1;
  assertEqual(await crypto.subtle.verify("HMAC", key, flipped, data), false);
  assertEqual(await crypto.subtle.verify("HMAC", key, sig.subarray(0, 16), data), false);
  assertEqual(await crypto.subtle.verify("HMAC", key, sig, utf8("other data")), false);
});

test("key usages are enforced", async () => {
  const signOnly = await crypto.subtle.importKey("raw", utf8("k"), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  await assertRejects(crypto.subtle.verify("HMAC", signOnly, new Uint8Array(32), utf8("x")), "InvalidAccessError");
  const verifyOnly = await crypto.subtle.importKey("raw", utf8("k"), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
  await assertRejects(crypto.subtle.sign("HMAC", verifyOnly, utf8("x")), "InvalidAccessError");
  await assertRejects(crypto.subtle.importKey("raw", utf8("k"), { name: "HMAC", hash: "SHA-256" }, false, ["encrypt"]), "SyntaxError");
  await assertRejects(crypto.subtle.importKey("raw", utf8("k"), { name: "HMAC", hash: "SHA-256" }, false, []), "SyntaxError");
  await assertRejects(crypto.subtle.sign("HMAC", { type: "secret" }, utf8("x")), "TypeError");
});

test("bad HMAC parameters", async () => {
  await assertRejects(crypto.subtle.importKey("raw", utf8("k"), "HMAC", false, ["sign"]), "TypeError");
  await assertRejects(crypto.subtle.importKey("raw", utf8("k"), { name: "HMAC" }, false, ["sign"]), "TypeError");
  await assertRejects(crypto.subtle.importKey("raw", new Uint8Array(0), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]), "DataError");
  await assertRejects(crypto.subtle.importKey("raw", utf8("k"), { name: "HMAC", hash: "SHA-256", length: 64 }, false, ["sign"]), "DataError");
  await assertRejects(crypto.subtle.importKey("raw", utf8("k"), { name: "HMAC", hash: "MD5" }, false, ["sign"]), "NotSupportedError");
  await assertRejects(crypto.subtle.importKey("pkcs8", utf8("k"), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]), "NotSupportedError");
});

test("everything else in crypto.subtle rejects with NotSupportedError", async () => {
  const key = await crypto.subtle.generateKey({ name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const data = utf8("x");
  for (const [name, call] of [
    ["encrypt", () => crypto.subtle.encrypt({ name: "AES-GCM", iv: new Uint8Array(12) }, key, data)],
    ["decrypt", () => crypto.subtle.decrypt({ name: "AES-GCM", iv: new Uint8Array(12) }, key, data)],
    ["deriveBits", () => crypto.subtle.deriveBits({ name: "PBKDF2" }, key, 128)],
    ["deriveKey", () => crypto.subtle.deriveKey({ name: "HKDF" }, key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"])],
    ["wrapKey", () => crypto.subtle.wrapKey("raw", key, key, "AES-KW")],
    ["unwrapKey", () => crypto.subtle.unwrapKey("raw", data, key, "AES-KW", "HMAC", false, ["sign"])],
    ["generateKey AES", () => crypto.subtle.generateKey({ name: "AES-GCM", length: 256 }, false, ["encrypt"])],
    ["importKey ECDSA", () => crypto.subtle.importKey("raw", data, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"])],
    ["sign RSA", () => crypto.subtle.sign("RSASSA-PKCS1-v1_5", key, data)],
  ]) {
    const p = call();
    assert(p instanceof Promise, `${name} returns a promise`);
    const e = await assertRejects(p, "NotSupportedError");
    assert(/not supported in the statehost sandbox/.test(e.message), e.message);
  }
});
