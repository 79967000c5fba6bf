// Headers, Request, Response and fetch (web/fetch.js). fetch goes through the host to the stub
// server at STUB_URL.

// The stub echoes header names as its HTTP stack spells them; compare them case-insensitively.
const lowerKeys = (o) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k.toLowerCase(), v]));

test("Headers are case-insensitive and combine values", () => {
  const h = new Headers({ "Content-Type": "text/plain", "X-Multi": "a" });
  h.append("x-multi", "b");
  assertEqual(h.get("content-type"), "text/plain");
  assertEqual(h.get("X-MULTI"), "a, b");
  assertEqual(h.has("Content-type"), true);
  assertEqual(h.get("missing"), null);
  h.set("X-Multi", "c");
  assertEqual(h.get("x-multi"), "c");
  h.delete("CONTENT-TYPE");
  assertEqual(h.has("content-type"), false);
  assertEqual(Object.prototype.toString.call(h), "[object Headers]");
});

test("Headers iterate sorted, lowercased and combined; set-cookie stays separate", () => {
  const h = new Headers([["B", "2"], ["a", "1"], ["b", "3"], ["Set-Cookie", "x=1"], ["set-cookie", "y=2"]]);
  assertEqual([...h], [["a", "1"], ["b", "2, 3"], ["set-cookie", "x=1"], ["set-cookie", "y=2"]]);
  assertEqual([...h.keys()], ["a", "b", "set-cookie", "set-cookie"]);
  assertEqual([...h.values()], ["1", "2, 3", "x=1", "y=2"]);
  assertEqual([...h.entries()][0], ["a", "1"]);
  assertEqual(h.getSetCookie(), ["x=1", "y=2"]);
  const seen = [];
  h.forEach((v, k, obj) => seen.push(k + "=" + v + (obj === h)));
  assertEqual(seen[0], "a=1true");
  assertEqual([...new Headers(h)], [...h]);
});

test("Headers validate names and values", () => {
  assertThrows(() => new Headers({ "bad name": "x" }), "TypeError");
  assertThrows(() => new Headers([["", "x"]]), "TypeError");
  assertThrows(() => new Headers().append("x", "a\r\nb"), "TypeError");
  assertThrows(() => new Headers().set("x", "\u0100"), "TypeError");
  assertThrows(() => new Headers([["only-name"]]), "TypeError");
  assertThrows(() => new Headers().get("a:b"), "TypeError");
  const h = new Headers();
  h.set("x", "  padded\t");
  assertEqual(h.get("x"), "padded");
});

test("Request: URL, method, headers and defaults", () => {
  const r = new Request("HTTPS://Example.com/a?b#c", { method: "post", headers: { "X-A": "1" }, body: "hi" });
  assertEqual(r.url, "https://example.com/a?b#c");
  assertEqual(r.method, "POST");
  assertEqual(r.headers.get("x-a"), "1");
  assertEqual(r.headers.get("content-type"), "text/plain;charset=UTF-8");
  assertEqual([r.redirect, r.credentials, r.mode, r.cache, r.referrer], ["follow", "same-origin", "cors", "default", "about:client"]);
  assert(r.signal instanceof AbortSignal, "always has a signal");
  assertEqual(new Request("http://h/", { method: "patch" }).method, "patch", "only standard methods are uppercased");
  assertEqual(new Request(new URL("http://h/x")).url, "http://h/x");
  assertEqual(Object.prototype.toString.call(r), "[object Request]");
});

test("Request rejects relative URLs, bad methods, GET bodies and object bodies", () => {
  assertThrows(() => new Request("/relative"), "TypeError");
  assertThrows(() => new Request("http://user:pw@h/"), "TypeError");
  assertThrows(() => new Request("http://h/", { method: "bad method" }), "TypeError");
  assertThrows(() => new Request("http://h/", { method: "CONNECT" }), "TypeError");
  assertThrows(() => new Request("http://h/", { body: "x" }), "TypeError");
  assertThrows(() => new Request("http://h/", { method: "HEAD", body: "x" }), "TypeError");
  assertThrows(() => new Request("http://h/", { method: "POST", body: { a: 1 } }), "TypeError");
  assertThrows(() => new Request("http://h/", { signal: {} }), "TypeError");
  assertThrows(() => new Request("http://h/", { redirect: "manual" }), "NotSupportedError");
  assertThrows(() => new Request("http://h/", { integrity: "sha256-abc" }), "NotSupportedError");
});

test("Request bodies: text, json, arrayBuffer, form params, and single use", async () => {
  const r = new Request("http://h/", { method: "POST", body: '{"a":1}' });
  assertEqual(r.bodyUsed, false);
  const c = r.clone();
  assertEqual(await r.json(), { a: 1 });
  assertEqual(r.bodyUsed, true);
  await assertRejects(r.text(), "TypeError");
  assertThrows(() => r.clone(), "TypeError");
  assertEqual(await c.text(), '{"a":1}');

  const bin = new Request("http://h/", { method: "PUT", body: new Uint8Array([1, 2, 3]).subarray(1) });
  assertEqual(Array.from(new Uint8Array(await bin.arrayBuffer())), [2, 3]);
  assertEqual(bin.headers.has("content-type"), false);

  const form = new Request("http://h/", { method: "POST", body: new URLSearchParams({ q: "a b" }) });
  assertEqual(form.headers.get("content-type"), "application/x-www-form-urlencoded;charset=UTF-8");
  assertEqual(await form.text(), "q=a+b");

  const copy = new Request(new Request("http://h/", { method: "POST", body: "moved" }));
  assertEqual(await copy.text(), "moved");
  assertEqual(new Request("http://h/").body, null);
  assertThrows(() => new Request("http://h/", { method: "POST", body: "x" }).body, "NotSupportedError");
});

test("Response basics", async () => {
  const r = new Response("hello", { status: 201, statusText: "Created", headers: { "X-Y": "z" } });
  assertEqual([r.status, r.statusText, r.ok, r.type, r.url, r.redirected], [201, "Created", true, "default", "", false]);
  assertEqual(r.headers.get("x-y"), "z");
  assertEqual(r.headers.get("content-type"), "text/plain;charset=UTF-8");
  assertEqual(await r.text(), "hello");
  assertEqual(r.bodyUsed, true);
  await assertRejects(r.text(), "TypeError");
  await assertRejects(r.arrayBuffer(), "TypeError");
  const empty = new Response();
  assertEqual([empty.status, empty.ok, empty.body, empty.bodyUsed], [200, true, null, false]);
  assertEqual(await empty.text(), "");
  assertEqual(new Response(null, { status: 404 }).ok, false);
  assertEqual(Object.prototype.toString.call(r), "[object Response]");
});

test("Response validation", () => {
  assertThrows(() => new Response("x", { status: 99 }), "RangeError");
  assertThrows(() => new Response("x", { status: 600 }), "RangeError");
  assertThrows(() => new Response("x", { status: 204 }), "TypeError");
  assertThrows(() => new Response("x", { statusText: "bad\n" }), "TypeError");
  assertThrows(() => new Response({ a: 1 }), "TypeError");
  new Response(null, { status: 204 });
});

test("Response clone, json, bytes, blob and body", async () => {
  const r = new Response('{"n":[1,2]}');
  const c = r.clone();
  assertEqual(await r.json(), { n: [1, 2] });
  assertEqual(Array.from(await c.bytes()).length, 11);
  await assertRejects(new Response("not json").json(), "SyntaxError");
  await assertRejects(new Response("x").blob(), "NotSupportedError");
  await assertRejects(new Response("x").formData(), "NotSupportedError");
  const e = assertThrows(() => new Response("x").body, "NotSupportedError");
  assert(/Response\.body streams/.test(e.message), e.message);
});

test("Response.json, Response.error and Response.redirect", async () => {
  const j = Response.json({ a: [1] }, { status: 202, headers: { "x-h": "1" } });
  assertEqual([j.status, j.headers.get("content-type"), j.headers.get("x-h")], [202, "application/json", "1"]);
  assertEqual(await j.json(), { a: [1] });
  assertThrows(() => Response.json(undefined), "TypeError");
  const err = Response.error();
  assertEqual([err.type, err.status, err.ok, err.statusText], ["error", 0, false, ""]);
  assertThrows(() => err.headers.set("a", "b"), "TypeError");
  const red = Response.redirect("http://h.com/next", 307);
  assertEqual([red.status, red.headers.get("location")], [307, "http://h.com/next"]);
  assertEqual(Response.redirect("http://h.com/").status, 302);
  assertThrows(() => Response.redirect("http://h.com/", 200), "RangeError");
  assertThrows(() => Response.redirect("/relative"), "TypeError");
});

test("fetch GET /json", async () => {
  const res = await fetch(STUB_URL + "/json");
  assert(res instanceof Response, "a Response");
  assertEqual([res.status, res.ok, res.type, res.redirected], [200, true, "basic", false]);
  assertEqual(res.url, STUB_URL + "/json");
  assert(/^application\/json/.test(res.headers.get("content-type")), "content-type");
  assertThrows(() => res.headers.set("x", "y"), "TypeError");
  assertEqual(await res.json(), { hello: "world" });
  assertEqual(res.bodyUsed, true);
});

test("fetch POST /echo sends method, headers and body", async () => {
  const res = await fetch(STUB_URL + "/echo", {
    method: "POST",
    headers: { "X-Custom": "yes", "Content-Type": "application/json" },
    body: JSON.stringify({ n: 1 }),
  });
  const echo = await res.json();
  const headers = lowerKeys(echo.headers);
  assertEqual(echo.method, "POST");
  assertEqual(headers["x-custom"], "yes");
  assertEqual(headers["content-type"], "application/json");
  assertEqual(echo.body, '{"n":1}');
});

test("fetch PUT /echo with a Request object and form params", async () => {
  const req = new Request(STUB_URL + "/echo", { method: "put", body: new URLSearchParams({ a: "1 2", b: "\u00e9" }) });
  const echo = await (await fetch(req)).json();
  assertEqual(echo.method, "PUT");
  assertEqual(echo.body, "a=1+2&b=%C3%A9");
  assertEqual(lowerKeys(echo.headers)["content-type"], "application/x-www-form-urlencoded;charset=UTF-8");
  assertEqual(req.bodyUsed, true);
});

test("fetch: error statuses resolve, they do not reject", async () => {
  const res = await fetch(STUB_URL + "/status/404");
  assertEqual([res.status, res.ok], [404, false]);
  assertEqual(typeof (await res.text()), "string");
  assertEqual(res.bodyUsed, true);
  const res500 = await fetch(STUB_URL + "/status/500");
  assertEqual(res500.status, 500);
  const res204 = await fetch(STUB_URL + "/status/204");
  assertEqual([res204.status, res204.body], [204, null]);
});

test("fetch follows redirects", async () => {
  const res = await fetch(STUB_URL + "/redirect");
  assertEqual([res.status, res.redirected, res.url], [200, true, STUB_URL + "/json"]);
  assertEqual(await res.json(), { hello: "world" });
});

test("fetch of binary bytes", async () => {
  const res = await fetch(STUB_URL + "/bytes");
  const buf = await res.arrayBuffer();
  assert(buf instanceof ArrayBuffer, "an ArrayBuffer");
  const bytes = new Uint8Array(buf);
  assertEqual(bytes.length, 256);
  assert(bytes.every((b, i) => b === i), "bytes 0..255");
});

test("fetch rejects non-http URLs and bad input with TypeError", async () => {
  await assertRejects(fetch("ftp://example.com/file"), "TypeError");
  await assertRejects(fetch("file:///etc/passwd"), "TypeError");
  await assertRejects(fetch("data:text/plain,hi"), "TypeError");
  await assertRejects(fetch("/relative"), "TypeError");
  await assertRejects(fetch(STUB_URL + "/json", { body: "GET with body" }), "TypeError");
  const p = fetch("not a url");
  assert(p instanceof Promise, "fetch never throws synchronously");
  await assertRejects(p, "TypeError");
});

test("fetch with an already aborted signal rejects with its reason", async () => {
  await assertRejects(fetch(STUB_URL + "/json", { signal: AbortSignal.abort() }), "AbortError");
  const reason = new RangeError("custom reason");
  const e = await assertRejects(fetch(STUB_URL + "/json", { signal: AbortSignal.abort(reason) }), "RangeError");
  assert(e === reason, "the reason itself");
});

test("aborting a pending fetch rejects it with the abort reason", async () => {
  const c = new AbortController();
  const p = fetch(STUB_URL + "/json", { signal: c.signal });
  c.abort();
  await assertRejects(p, "AbortError");
});

test("an abort after the response arrived fails the unread body, not a body already read", async () => {
  const c = new AbortController();
  const res = await fetch(STUB_URL + "/json", { signal: c.signal });
  c.abort();
  assertEqual(res.status, 200);
  await assertRejects(res.json(), "AbortError");

  const d = new AbortController();
  const read = await fetch(STUB_URL + "/json", { signal: d.signal });
  const data = await read.json();
  d.abort();
  assertEqual(data, { hello: "world" });
});
