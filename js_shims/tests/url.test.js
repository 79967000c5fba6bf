// URL and URLSearchParams (web/url.js).

const parts = (u) => [u.protocol, u.username, u.password, u.host, u.hostname, u.port, u.pathname, u.search, u.hash];

test("all the components of an absolute URL", () => {
  const u = new URL("https://user:pw@Example.COM:8443/a/b?x=1&y=2#frag");
  assertEqual(u.href, "https://user:pw@example.com:8443/a/b?x=1&y=2#frag");
  assertEqual(u.origin, "https://example.com:8443");
  assertEqual(parts(u), ["https:", "user", "pw", "example.com:8443", "example.com", "8443", "/a/b", "?x=1&y=2", "#frag"]);
  assertEqual(u.toString(), u.href);
  assertEqual(u.toJSON(), u.href);
  assertEqual(JSON.stringify({ u }), JSON.stringify({ u: u.href }));
  assertEqual(Object.prototype.toString.call(u), "[object URL]");
});

test("scheme and host are lowercased; default ports are dropped", () => {
  assertEqual(new URL("HTTP://EXAMPLE.com:80/Path").href, "http://example.com/Path");
  assertEqual(new URL("https://h:443/").href, "https://h/");
  assertEqual(new URL("ws://h:80/").port, "");
  assertEqual(new URL("wss://h:443/").host, "h");
  assertEqual(new URL("ftp://h:21/").href, "ftp://h/");
  assertEqual(new URL("http://h:443/").port, "443");
  assertEqual(new URL("http://example.com").pathname, "/");
});

test("relative references against a base", () => {
  const base = "http://a.com/b/c/d;p?q#f";
  const r = (ref) => new URL(ref, base).href;
  assertEqual(r("g"), "http://a.com/b/c/g");
  assertEqual(r("./g"), "http://a.com/b/c/g");
  assertEqual(r("g/"), "http://a.com/b/c/g/");
  assertEqual(r("/g"), "http://a.com/g");
  assertEqual(r("//g"), "http://g/");
  assertEqual(r("?y"), "http://a.com/b/c/d;p?y");
  assertEqual(r("#s"), "http://a.com/b/c/d;p?q#s");
  assertEqual(r(""), "http://a.com/b/c/d;p?q");
  assertEqual(r("."), "http://a.com/b/c/");
  assertEqual(r(".."), "http://a.com/b/");
  assertEqual(r("../g"), "http://a.com/b/g");
  assertEqual(r("../../g"), "http://a.com/g");
  assertEqual(r("../../../../g"), "http://a.com/g");
  assertEqual(r("g;x?y#s"), "http://a.com/b/c/g;x?y#s");
  assertEqual(r("https://other.org/x"), "https://other.org/x");
  assertEqual(new URL("/x", new URL("https://h.com/a/b")).href, "https://h.com/x");
});

test("dot segments are resolved in absolute URLs too", () => {
  assertEqual(new URL("http://h/a/b/../c/./d").pathname, "/a/c/d");
  assertEqual(new URL("http://h/a/%2e%2E/b").pathname, "/b");
  assertEqual(new URL("http://h/a/..").pathname, "/");
});

test("spaces and other characters are percent-encoded per component", () => {
  const u = new URL("http://h/a b/\u00e9?q=a b&r=\u00e9#f g");
  assertEqual(u.pathname, "/a%20b/%C3%A9");
  assertEqual(u.search, "?q=a%20b&r=%C3%A9");
  assertEqual(u.hash, "#f%20g");
  assertEqual(new URL("http://h/<>\"`{}").pathname, "/%3C%3E%22%60%7B%7D");
  assertEqual(new URL("http://h/?'").search, "?%27");
  assertEqual(new URL("foo://h/?'").search, "?'");
});

test("backslashes and surrounding whitespace in special URLs", () => {
  assertEqual(new URL("  http:\\\\h\\a\\b  ").href, "http://h/a/b");
  assertEqual(new URL("http://h/a\tb\nc").pathname, "/abc");
});

test("IPv4 and IPv6 hosts are normalised", () => {
  assertEqual(new URL("http://127.1/").hostname, "127.0.0.1");
  assertEqual(new URL("http://0x7f.0.0.1/").hostname, "127.0.0.1");
  assertEqual(new URL("http://2130706433/").hostname, "127.0.0.1");
  assertEqual(new URL("http://[0:0:0:0:0:0:0:1]:8080/").host, "[::1]:8080");
  assertEqual(new URL("http://[2001:DB8:0:0:1:0:0:1]/").hostname, "[2001:db8::1:0:0:1]");
  assertEqual(new URL("http://[::ffff:192.168.0.1]/").hostname, "[::ffff:c0a8:1]");
  assertThrows(() => new URL("http://256.256.256.256/"), "TypeError");
  assertThrows(() => new URL("http://[::1/"), "TypeError");
});

test("garbage is a TypeError 'Invalid URL'", () => {
  for (const bad of ["", "nope", "http://", "http://exa mple.com/", "http://h:99999/", "http://h:abc/", "//no-scheme", "http://a@/"]) {
    const e = assertThrows(() => new URL(bad), "TypeError");
    assert(/^Invalid URL/.test(e.message), `message for ${JSON.stringify(bad)}: ${e.message}`);
  }
  assertThrows(() => new URL("/relative", "not a base"), "TypeError");
  assertThrows(() => new URL(), "TypeError");
});

test("non-ASCII host names are rejected (no IDNA)", () => {
  assertThrows(() => new URL("http://b\u00fccher.de/"), "TypeError");
});

test("URL.canParse and URL.parse", () => {
  assertEqual(URL.canParse("http://x"), true);
  assertEqual(URL.canParse("x"), false);
  assertEqual(URL.canParse("x", "http://h/"), true);
  assertEqual(URL.parse("nope"), null);
  assertEqual(URL.parse("/p", "http://h").href, "http://h/p");
});

test("non-special and opaque URLs", () => {
  assertEqual(new URL("mailto:Joe@Example.COM").pathname, "Joe@Example.COM");
  assertEqual(new URL("mailto:x").origin, "null");
  assertEqual(new URL("data:text/plain,hi there").href, "data:text/plain,hi there");
  const u = new URL("custom://Host:99/p?q#h");
  assertEqual(parts(u), ["custom:", "", "", "Host:99", "Host", "99", "/p", "?q", "#h"]);
  assertEqual(new URL("file:///C:/a/../b").href, "file:///C:/b");
  assertEqual(new URL("file://localhost/etc").href, "file:///etc");
});

test("setters update the URL", () => {
  const u = new URL("http://h.com/p?q=1#x");
  u.pathname = "/a b/c";
  u.search = "k=v";
  u.hash = "top";
  u.port = "8080";
  u.hostname = "Other.org";
  u.username = "me";
  u.password = "s3cr@t";
  assertEqual(u.href, "http://me:s3cr%40t@other.org:8080/a%20b/c?k=v#top");
  u.protocol = "https";
  u.port = "443";
  assertEqual(u.href, "https://me:s3cr%40t@other.org/a%20b/c?k=v#top");
  u.host = "x.io:9000";
  u.search = "";
  u.hash = "";
  assertEqual(u.href, "https://me:s3cr%40t@x.io:9000/a%20b/c");
  u.port = "not a port";
  assertEqual(u.port, "9000", "invalid port ignored");
  u.protocol = "mailto";
  assertEqual(u.protocol, "https:", "cannot switch special to non-special");
  u.href = "http://new.example/";
  assertEqual(u.host, "new.example");
  assertThrows(() => { u.href = "garbage"; }, "TypeError");
});

test("searchParams is live in both directions", () => {
  const u = new URL("http://h/?a=1&b=2");
  const p = u.searchParams;
  assert(p === u.searchParams, "same object");
  p.append("c", "x y");
  assertEqual(u.search, "?a=1&b=2&c=x+y");
  p.delete("a");
  p.delete("b");
  p.delete("c");
  assertEqual(u.href, "http://h/");
  u.search = "?z=9";
  assertEqual(p.get("z"), "9");
  u.href = "http://h/?w=0";
  assertEqual(p.get("w"), "0");
});

test("URLSearchParams from a string, with or without '?'", () => {
  const p = new URLSearchParams("?a=1&b=x+y&a=%20z&c&=e&&d=%zz");
  assertEqual([...p], [["a", "1"], ["b", "x y"], ["a", " z"], ["c", ""], ["", "e"], ["d", "%zz"]]);
  assertEqual(new URLSearchParams("a=1").get("a"), "1");
  assertEqual(new URLSearchParams("").size, 0);
  assertEqual(new URLSearchParams("q=%E2%82%AC").get("q"), "\u20ac");
});

test("URLSearchParams from an object and from pairs", () => {
  assertEqual(new URLSearchParams({ x: 1, y: "two words", z: "\u00e9&=" }).toString(), "x=1&y=two+words&z=%C3%A9%26%3D");
  assertEqual(new URLSearchParams([["a", "1"], ["a", "2"]]).getAll("a"), ["1", "2"]);
  assertEqual(new URLSearchParams(new Map([["m", "v"]])).toString(), "m=v");
  assertEqual(new URLSearchParams(new URLSearchParams("k=v")).toString(), "k=v");
  assertThrows(() => new URLSearchParams([["only one"]]), "TypeError");
  assertThrows(() => new URLSearchParams([["a", "b", "c"]]), "TypeError");
});

test("URLSearchParams methods", () => {
  const p = new URLSearchParams("b=2&a=1&b=3");
  assertEqual(p.get("b"), "2");
  assertEqual(p.get("missing"), null);
  assertEqual(p.getAll("b"), ["2", "3"]);
  assertEqual(p.has("a"), true);
  assertEqual(p.has("b", "3"), true);
  assertEqual(p.has("b", "4"), false);
  assertEqual(p.size, 3);
  p.set("b", "9");
  assertEqual(p.toString(), "b=9&a=1");
  p.append("c", "1");
  p.append("c", "2");
  p.delete("c", "1");
  assertEqual(p.toString(), "b=9&a=1&c=2");
  p.sort();
  assertEqual(p.toString(), "a=1&b=9&c=2");
  assertEqual([...p.keys()], ["a", "b", "c"]);
  assertEqual([...p.values()], ["1", "9", "2"]);
  assertEqual([...p.entries()], [["a", "1"], ["b", "9"], ["c", "2"]]);
  const seen = [];
  p.forEach((value, key, obj) => seen.push([key, value, obj === p]));
  assertEqual(seen, [["a", "1", true], ["b", "9", true], ["c", "2", true]]);
  assertEqual(Object.prototype.toString.call(p), "[object URLSearchParams]");
});

test("URLSearchParams.sort is stable", () => {
  const p = new URLSearchParams("z=1&a=2&z=0&a=1");
  p.sort();
  assertEqual(p.toString(), "a=2&a=1&z=1&z=0");
});

test("form encoding: spaces as '+', reserved characters escaped", () => {
  const p = new URLSearchParams();
  p.append("q", "a b+c&d=e/f?g~h*i-j_k.l!m'n(o)p");
  assertEqual(p.toString(), "q=a+b%2Bc%26d%3De%2Ff%3Fg%7Eh*i-j_k.l%21m%27n%28o%29p");
  assertEqual(new URLSearchParams(p.toString()).get("q"), "a b+c&d=e/f?g~h*i-j_k.l!m'n(o)p");
});
