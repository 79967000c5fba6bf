#!/usr/bin/env node
// Smoke test of the baseline server; exits 0 when every check passes, 1 otherwise.
//
//   node bench/baseline/smoke.mjs                    # checks
//   node bench/baseline/smoke.mjs --bench [--events 1000]
//                                                    # checks, then sequential toggles against one
//                                                    # instance per major, with latency percentiles
//
// Starts server.mjs on port 0 with a temporary database, restarts it once on the same database,
// and runs a tiny in-process stub for the fetcher machine.

import { spawn } from "node:child_process";
import { createServer, request, Agent } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import assert from "node:assert/strict";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
  options: { bench: { type: "boolean", default: false }, events: { type: "string", default: "1000" } },
});

const agent = new Agent({ keepAlive: true, maxSockets: 4 });

function call(base, method, pathname, body) {
  const data = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      base + pathname,
      {
        method,
        agent,
        headers: {
          authorization: "Bearer ignored-by-the-baseline",
          "content-type": "application/json",
          ...(data === undefined ? {} : { "content-length": Buffer.byteLength(data) }),
        },
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let json;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode, body: json, text, type: res.headers["content-type"] });
        });
      },
    );
    req.on("error", reject);
    req.end(data);
  });
}

function startServer(db) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(HERE, "server.mjs"), "--port", "0", "--db", db], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    const timer = setTimeout(() => reject(new Error("server did not start within 20 s")), 20_000);
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = /^listening (http:\/\/\S+)\n/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, base: m[1], firstLine: out.split("\n")[0] });
      }
    });
    child.on("exit", (code) => reject(new Error(`server exited early with ${code}`)));
  });
}

function stopServer(server) {
  return new Promise((resolve) => {
    server.child.removeAllListeners("exit");
    server.child.on("exit", resolve);
    server.child.kill("SIGTERM");
  });
}

function startStub() {
  // The fetcher fixture fetches `${baseUrl}/items/${id}`; id 0 is a 404.
  const stub = createServer((req, res) => {
    const m = /^\/items\/(\d+)$/.exec(req.url);
    const id = m ? Number(m[1]) : 0;
    if (!id) {
      res.writeHead(404, { "content-type": "text/plain" });
      return res.end("not found");
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ id, name: `item-${id}` }));
  });
  return new Promise((resolve) => stub.listen(0, "127.0.0.1", () => resolve(stub)));
}

let failures = 0;
async function check(name, fn) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (err) {
    failures += 1;
    console.log(`FAIL ${name}\n     ${err.message.split("\n").join("\n     ")}`);
  }
}

const STATE_KEYS = ["ts", "state", "publicContext", "tags", "done"];

async function main() {
  const dir = mkdtempSync(path.join(tmpdir(), "baseline-smoke-"));
  const db = path.join(dir, "baseline.db");
  const stub = await startStub();
  const stubUrl = `http://127.0.0.1:${stub.address().port}`;
  let server = await startServer(db);
  try {
    const base = server.base;
    await check("prints exactly 'listening http://127.0.0.1:<port>'", () => {
      assert.match(server.firstLine, /^listening http:\/\/127\.0\.0\.1:\d+$/);
    });
    await check("GET /health", async () => {
      const r = await call(base, "GET", "/health");
      assert.equal(r.status, 200);
      assert.deepEqual(r.body, { ok: true });
    });

    for (const machine of ["toggle", "toggle-v4"]) {
      await check(`${machine}: create, 3 events alternate, read back`, async () => {
        let r = await call(base, "POST", `/machines/${machine}`, { slug: "smoke" });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.type, "application/json; charset=utf-8");
        assert.deepEqual(Object.keys(r.body), STATE_KEYS);
        assert.deepEqual(
          { ...r.body, ts: 0 },
          { ts: 0, state: "inactive", publicContext: { toggleCount: 0 }, tags: [], done: false },
        );
        let ts = r.body.ts;
        const expected = [
          ["active", 1],
          ["inactive", 1],
          ["active", 2],
        ];
        const events = ["toggle", { type: "toggle" }, "toggle"];
        for (let i = 0; i < 3; i++) {
          r = await call(base, "POST", `/machines/${machine}/i/smoke/events`, { event: events[i] });
          assert.equal(r.status, 200, r.text);
          assert.equal(r.body.state, expected[i][0]);
          assert.deepEqual(r.body.publicContext, { toggleCount: expected[i][1] });
          assert.ok(r.body.ts > ts, "ts must increase");
          ts = r.body.ts;
        }
        r = await call(base, "GET", `/machines/${machine}/i/smoke`);
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(r.body, { ts, state: "active", publicContext: { toggleCount: 2 }, tags: [], done: false });
      });
      await check(`${machine}: duplicate slug is 409 invalid-state`, async () => {
        const r = await call(base, "POST", `/machines/${machine}`, { slug: "smoke" });
        assert.equal(r.status, 409);
        assert.equal(r.body.code, "invalid-state");
        assert.equal(typeof r.body.error, "string");
      });
    }

    await check("counter: create context merged over the machine's (max 2), guards hold", async () => {
      let r = await call(base, "POST", "/machines/counter", { slug: "c", context: { max: 2 } });
      assert.equal(r.status, 200, r.text);
      const counts = [];
      for (const event of ["inc", "inc", "inc", { type: "set", value: 5 }, { type: "set", value: 1 }, "dec", "dec"]) {
        r = await call(base, "POST", "/machines/counter/i/c/events", { event });
        counts.push(r.body.publicContext.count);
      }
      assert.deepEqual(counts, [1, 2, 2, 2, 1, 0, 0]);
    });

    for (const machine of ["fetcher", "fetcher-v4"]) {
      await check(`${machine}: the response waits for the invoked fetch`, async () => {
        let r = await call(base, "POST", `/machines/${machine}`, {
          slug: "f",
          context: { baseUrl: stubUrl, public: { item: null, error: null } },
        });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.body.state, "idle");
        r = await call(base, "POST", `/machines/${machine}/i/f/events`, { event: { type: "load", id: 7 } });
        assert.equal(r.body.state, "loaded", r.text);
        assert.deepEqual(r.body.publicContext, { item: { id: 7, name: "item-7" }, error: null });
        r = await call(base, "POST", `/machines/${machine}/i/f/events`, { event: { type: "load", id: 0 } });
        assert.equal(r.body.state, "failed", r.text);
        assert.equal(r.body.publicContext.error, "GET /items/0 failed with status 404");
      });
    }

    await check("concurrent events to one instance are all applied, one at a time", async () => {
      await call(base, "POST", "/machines/toggle", { slug: "busy" });
      const answers = await Promise.all(
        Array.from({ length: 50 }, () => call(base, "POST", "/machines/toggle/i/busy/events", { event: "toggle" })),
      );
      assert.ok(answers.every((r) => r.status === 200));
      const r = await call(base, "GET", "/machines/toggle/i/busy");
      assert.deepEqual([r.body.state, r.body.publicContext.toggleCount], ["inactive", 25]);
      await call(base, "POST", "/machines/fetcher-v4", { slug: "busy", context: { baseUrl: stubUrl } });
      const loads = await Promise.all(
        [1, 2, 3, 4, 5].map((id) => call(base, "POST", "/machines/fetcher-v4/i/busy/events", { event: { type: "load", id } })),
      );
      assert.ok(loads.every((l) => l.status === 200 && l.body.state === "loaded"), loads.map((l) => l.text).join("\n"));
    });

    await check("errors: 404 / 400 with {error, code, parameter?}", async () => {
      let r = await call(base, "GET", "/machines/toggle/i/nope");
      assert.equal(r.status, 404);
      assert.equal(r.body.code, "not-found");
      r = await call(base, "GET", "/machines/no-such-machine/i/x");
      assert.equal(r.status, 404);
      r = await call(base, "POST", "/machines/toggle/i/nope/events", { event: "toggle" });
      assert.equal(r.status, 404);
      r = await call(base, "POST", "/machines/toggle/i/smoke/events", "{not json");
      assert.equal(r.status, 400);
      assert.deepEqual([r.body.code, r.body.parameter], ["invalid-parameter", "body"]);
      r = await call(base, "POST", "/machines/toggle/i/smoke/events", { event: 3 });
      assert.deepEqual([r.status, r.body.parameter], [400, "event"]);
      r = await call(base, "POST", "/machines/toggle", { slug: "not a name" });
      assert.deepEqual([r.status, r.body.parameter], [400, "slug"]);
    });

    await check("the instance survives a restart (same db) and keeps its seq/ts", async () => {
      const before = await call(base, "GET", "/machines/toggle-v4/i/smoke");
      const before5 = await call(base, "GET", "/machines/toggle/i/smoke");
      await stopServer(server);
      server = await startServer(db);
      const after = await call(server.base, "GET", "/machines/toggle-v4/i/smoke");
      const after5 = await call(server.base, "GET", "/machines/toggle/i/smoke");
      assert.deepEqual(after.body, before.body);
      assert.deepEqual(after5.body, before5.body);
      const next = await call(server.base, "POST", "/machines/toggle-v4/i/smoke/events", { event: "toggle" });
      assert.equal(next.body.state, "inactive");
      assert.deepEqual(next.body.publicContext, { toggleCount: 2 });
      const next5 = await call(server.base, "POST", "/machines/toggle/i/smoke/events", { event: "toggle" });
      assert.equal(next5.body.state, "inactive");
      assert.ok(next5.body.ts > before5.body.ts);
    });

    if (args.bench && failures === 0) {
      const n = Number(args.events);
      for (const machine of ["toggle", "toggle-v4"]) {
        const slug = `bench-${Date.now()}`;
        await call(server.base, "POST", `/machines/${machine}`, { slug });
        for (let i = 0; i < 20; i++) await call(server.base, "POST", `/machines/${machine}/i/${slug}/events`, { event: "toggle" });
        const samples = [];
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < n; i++) {
          const t = process.hrtime.bigint();
          const r = await call(server.base, "POST", `/machines/${machine}/i/${slug}/events`, { event: "toggle" });
          samples.push(Number(process.hrtime.bigint() - t) / 1e6);
          if (r.status !== 200) throw new Error(`bench event failed: ${r.status} ${r.text}`);
        }
        const total = Number(process.hrtime.bigint() - t0) / 1e9;
        samples.sort((a, b) => a - b);
        const pct = (q) => samples[Math.min(samples.length - 1, Math.floor(samples.length * q))].toFixed(3);
        console.log(
          `bench ${machine}: ${n} sequential events, median ${pct(0.5)} ms, p90 ${pct(0.9)} ms, ` +
            `p99 ${pct(0.99)} ms, max ${samples.at(-1).toFixed(3)} ms, ${(n / total).toFixed(0)} events/s`,
        );
      }
    }
  } finally {
    await stopServer(server);
    stub.close();
    agent.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(failures ? `${failures} check(s) failed` : "all checks passed");
  process.exit(failures ? 1 : 0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
