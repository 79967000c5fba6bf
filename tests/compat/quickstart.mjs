#!/usr/bin/env node
// Drives the OFFICIAL, unmodified @statebacked/client 0.1.37 and @statebacked/token 0.2.0 against a
// running statehost server, end to end. See README.md for the sequence that precedes it (server,
// `statehost login`, `smply machines create --machine toggle --node toggle.ts`, `smply keys create`).
//
//   STATEHOST_URL=http://127.0.0.1:PORT ORG_ID=org_… ADMIN_TOKEN=… MACHINE=toggle \
//   KEY_ID=sbk_… KEY_SECRET=sbsec_… node tests/compat/quickstart.mjs
//
// Optional: WHOAMI_MACHINE (default "whoami": created here, through the client, from whoami.ts),
// RUN_ID (suffix of the instance names this run creates; default random, so reruns against the same
// server do not collide), CHECK_TIMEOUT_MS (per check, default 60000).
//
// Prints one JSON line per passed check, {"check": "<name>", "ok": true, ...details}, and a final
// {"check": "all", "ok": true, "checks": N}. On the first failure it prints
// {"check": "<name>", "ok": false, "error": "..."} to stdout, a readable message to stderr, and exits 1.
// Exit 2: bad environment.
//
// Method names, argument shapes and option names are those of client 0.1.37's esm/src/index.js
// (read in node_modules): getOrCreate(machine, instance, {context}), sendEvent(machine, instance,
// {event}), machineVersions.create(machine, {clientInfo, makeCurrent, code | gzippedCode}),
// machineInstances.dangerously.delete(machine, instance, {dangerDataWillBeDeletedForever: true})
// (the client adds the HMAC itself), errors.* classes.

import crypto from "node:crypto";
import path from "node:path";
import zlib from "node:zlib";
import { fileURLToPath } from "node:url";

import * as esbuild from "esbuild";
import { StateBackedClient, errors } from "@statebacked/client";
import { signToken } from "@statebacked/token";
import { CheckFailure, assert, describeError, emit, env as sharedEnv, passedCount, runCheck } from "./checks.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));

// ---------------------------------------------------------------------------------------------
// Environment

const env = (name, fallback) => sharedEnv("quickstart", name, fallback);

// The client builds URLs as `${apiHost}/machines`, so a trailing slash would give `//machines`.
const API_HOST = env("STATEHOST_URL").replace(/\/+$/, "");
const ORG_ID = env("ORG_ID");
const ADMIN_TOKEN = env("ADMIN_TOKEN");
const MACHINE = env("MACHINE");
const KEY_ID = env("KEY_ID");
const KEY_SECRET = env("KEY_SECRET");
const WHOAMI = env("WHOAMI_MACHINE", "whoami");
const RUN = env("RUN_ID", crypto.randomBytes(4).toString("hex"));
const CHECK_TIMEOUT_MS = Number(env("CHECK_TIMEOUT_MS", "60000"));

const ANON_INSTANCE = "anon-1";
const TOKEN_SERVICE = "test-svc";
const IDP_AUD = "statehost-compat";
const IDP_ISS = "https://idp.compat.statehost.test/";

// ---------------------------------------------------------------------------------------------
// Reporting

async function check(name, fn) {
  return runCheck("quickstart", name, fn, CHECK_TIMEOUT_MS);
}

/** Awaits `promise` and requires it to reject with an instance of `Cls`; returns the error. */
async function expectReject(promise, Cls, what) {
  let value;
  try {
    value = await promise;
  } catch (e) {
    if (e instanceof Cls) return e;
    throw new CheckFailure(`${what}: expected ${Cls.name}, got ${describeError(e)}`);
  }
  throw new CheckFailure(`${what}: expected ${Cls.name}, but the call succeeded`, value);
}

// ---------------------------------------------------------------------------------------------
// Helpers

const decodeJwt = (jwt) => {
  const [h, p] = jwt.split(".");
  return {
    header: JSON.parse(Buffer.from(h, "base64url").toString("utf8")),
    payload: JSON.parse(Buffer.from(p, "base64url").toString("utf8")),
  };
};

const sameJson = (a, b) => JSON.stringify(sortKeys(a)) === JSON.stringify(sortKeys(b));
function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  return v;
}

/** A State object as the client returns it (State + the client-derived `states`). */
function assertState(s, what) {
  assert(s && typeof s === "object", `${what}: no state object`, s);
  assert(typeof s.ts === "number" && Number.isFinite(s.ts), `${what}: ts must be a number (ms epoch)`, s);
  assert(s.state !== undefined, `${what}: missing state`, s);
  assert(s.publicContext && typeof s.publicContext === "object", `${what}: publicContext must be an object`, s);
  assert(Array.isArray(s.tags), `${what}: tags must be an array`, s);
  assert(typeof s.done === "boolean", `${what}: done must be a boolean`, s);
  assert(Array.isArray(s.states), `${what}: client did not derive states`, s);
}

const flip = (state) => (state === "active" ? "inactive" : "active");

/** Follows `cursor` through every page of a list call. */
async function collect(listFn, field) {
  const items = [];
  let cursor;
  for (let page = 0; page < 1000; page += 1) {
    const res = await listFn(cursor ? { cursor } : undefined);
    assert(res && Array.isArray(res[field]), `list response lacks a "${field}" array`, res);
    items.push(...res[field]);
    if (!res.cursor) return items;
    cursor = res.cursor;
  }
  throw new CheckFailure(`list did not end after 1000 pages (${field})`);
}

/** Bundles a machine the way smply 0.1.18's `--node` build does (esbuild; xstate inlined). */
async function bundle(options) {
  const res = await esbuild.build({
    ...options,
    bundle: true,
    write: false,
    platform: "browser",
    format: "esm",
    minify: true,
    keepNames: true,
    legalComments: "none",
    define: { "process.env.NODE_ENV": '"production"' },
    drop: ["debugger"],
    logLevel: "silent",
  });
  return res.outputFiles[0].text;
}

function hs256(claims, secret) {
  const h = Buffer.from(JSON.stringify({ alg: "HS256", typ: "JWT" })).toString("base64url");
  const p = Buffer.from(JSON.stringify(claims)).toString("base64url");
  const s = crypto.createHmac("sha256", secret).update(`${h}.${p}`).digest("base64url");
  return `${h}.${p}.${s}`;
}

const opts = { apiHost: API_HOST };
const keyToken = (claims) =>
  signToken({ stateBackedKeyId: KEY_ID, stateBackedSecretKey: KEY_SECRET }, claims, { expires: { in: "1h" } });

// ---------------------------------------------------------------------------------------------
// The checks

const admin = new StateBackedClient(ADMIN_TOKEN, { ...opts, orgId: ORG_ID });
const names = {
  key: `key-${RUN}`,
  missing: `missing-${RUN}`,
  whoami: `w-${RUN}`,
  whoamiOther: `w-other-${RUN}`,
  exchange: `x-${RUN}`,
  v2: `v2-${RUN}`,
  del: `del-${RUN}`,
};
let v1Id;
let keyInstanceInitial; // the first state of names.key, created on v1

await check("machine-deployed-by-smply", async () => {
  const res = await admin.machines.get(MACHINE);
  assert(res && res.machine, "GET /machines/{m} must wrap the machine in a `machine` object", res);
  assert(res.machine.currentVersion?.id?.startsWith("ver_"), "machine has no current version (smply machines create --node should have made one)", res);
  v1Id = res.machine.currentVersion.id;
  return { machine: MACHINE, currentVersion: res.machine.currentVersion, run: RUN };
});

// --- anonymous session ------------------------------------------------------------------------

const anon = new StateBackedClient({ anonymous: { orgId: ORG_ID } }, opts);
let anonState;

await check("anonymous-get-or-create", async () => {
  const s = await anon.machineInstances.getOrCreate(MACHINE, ANON_INSTANCE, { context: {} });
  assertState(s, "getOrCreate");
  assert(s.state === "inactive" || s.state === "active", "toggle state must be inactive or active", s);
  assert(typeof s.publicContext.toggleCount === "number", "publicContext.toggleCount must be a number", s);
  anonState = s;
  return { state: s.state, publicContext: s.publicContext, ts: s.ts };
});

await check("anonymous-token", async () => {
  // The client exchanged its self-signed HS256 token at POST /tokens (service
  // anonymous-statebacked-dev); what came back must be a key-signed token whose act is the
  // anonymous authContext (spec 2.9).
  const { header, payload } = decodeJwt(await anon.token());
  assert(header.alg === "HS256" && /^sbk_/.test(header.kid ?? ""), "exchanged token must be HS256 with an sbk_ kid", header);
  assert(typeof payload.exp === "number", "exchanged token must carry a numeric exp (the client reads it)", payload);
  const act = payload.act ?? {};
  assert(act.auth === "anonymous" && typeof act.sid === "string" && act.did === act.sid, "act must be {sid, did (= sid by default), auth: 'anonymous'}", payload);
  return { kid: header.kid, act };
});

await check("anonymous-send-event", async () => {
  const s0 = anonState;
  const s1 = await anon.machineInstances.sendEvent(MACHINE, ANON_INSTANCE, { event: "toggle" });
  assertState(s1, "sendEvent (string event)");
  const s2 = await anon.machineInstances.sendEvent(MACHINE, ANON_INSTANCE, { event: { type: "toggle" } });
  assertState(s2, "sendEvent (object event)");
  assert(s1.state === flip(s0.state) && s2.state === s0.state, "each toggle must flip the state", { s0, s1, s2 });
  const entered = s1.state === "active" ? s1 : s2; // the send that entered "active"
  const before = s1.state === "active" ? s0 : s1;
  assert(entered.publicContext.toggleCount === before.publicContext.toggleCount + 1, "entering active must increment publicContext.toggleCount", { s0, s1, s2 });
  assert(s2.publicContext.toggleCount === s0.publicContext.toggleCount + 1, "two toggles must add exactly one to toggleCount", { s0, s1, s2 });
  assert(s0.ts < s1.ts && s1.ts < s2.ts, "ts must increase with every transition", { s0, s1, s2 });
  anonState = s2;
  return { states: [s0.state, s1.state, s2.state], toggleCount: s2.publicContext.toggleCount };
});

await check("anonymous-get", async () => {
  const g = await anon.machineInstances.get(MACHINE, ANON_INSTANCE);
  assertState(g, "get");
  assert(g.state === anonState.state && sameJson(g.publicContext, anonState.publicContext) && g.ts === anonState.ts, "get must return the last committed state (same ts)", { get: g, last: anonState });
  return { state: g.state, ts: g.ts };
});

await check("denied-write", async () => {
  const e = await expectReject(
    anon.machineInstances.sendEvent(MACHINE, ANON_INSTANCE, { event: { type: "forbidden" } }),
    errors.RejectedByMachineAuthorizerError,
    "event of type forbidden",
  );
  assert(e.status === 403 && e.code === "rejected-by-machine-authorizer", "expected 403 rejected-by-machine-authorizer", { status: e.status, code: e.code });
  const g = await anon.machineInstances.get(MACHINE, ANON_INSTANCE);
  assert(g.ts === anonState.ts && g.state === anonState.state, "a rejected event must not change the instance", { get: g, last: anonState });
  return { error: e.name, status: e.status, code: e.code };
});

// --- key-signed token (@statebacked/token) ------------------------------------------------------

const allowedToken = await keyToken({ sub: "u-allowed" });
const otherToken = await keyToken({ sub: "u-other" });
const keyClient = new StateBackedClient(allowedToken, opts);
const otherClient = new StateBackedClient(otherToken, opts);

await check("key-signed-token", async () => {
  const { header, payload } = decodeJwt(allowedToken);
  assert(header.kid === KEY_ID && payload.aud === "https://api.statebacked.dev/", "signToken output unexpected", { header, payload });
  const s0 = await keyClient.machineInstances.getOrCreate(MACHINE, names.key, { context: {} });
  assertState(s0, "getOrCreate");
  assert(s0.state === "inactive" && s0.publicContext.toggleCount === 0, "a new toggle instance starts inactive with toggleCount 0", s0);
  keyInstanceInitial = s0;
  const s1 = await keyClient.machineInstances.sendEvent(MACHINE, names.key, { event: "toggle" });
  assert(s1.state === "active" && s1.publicContext.toggleCount === 1, "toggle must enter active with toggleCount 1", s1);
  return { instance: names.key, state: s1.state, toggleCount: s1.publicContext.toggleCount, tokenHeader: header };
});

await check("missing-instance-404", async () => {
  const e = await expectReject(keyClient.machineInstances.get(MACHINE, names.missing), errors.NotFoundError, "GET of a missing instance");
  return { status: e.status };
});

await check("duplicate-instance-409", async () => {
  const e = await expectReject(keyClient.machineInstances.create(MACHINE, { slug: names.key }), errors.ConflictError, "creating an existing instance");
  return { status: e.status, code: e.code };
});

// --- authContext: the whoami machine -------------------------------------------------------------

await check("whoami-deploy", async () => {
  let existed = false;
  try {
    await admin.machines.create(WHOAMI); // 201, no body
  } catch (e) {
    if (!(e instanceof errors.ConflictError)) throw e;
    existed = true; // a rerun against the same server
  }
  const code = await bundle({ entryPoints: [path.join(HERE, "whoami.ts")] });
  const gzippedCode = new Uint8Array(zlib.gzipSync(Buffer.from(code, "utf8")));
  // gzippedCode → POST /machines/{m}/v?gzip and content-encoding=gzip in the upload (what smply does).
  const res = await admin.machineVersions.create(WHOAMI, { clientInfo: `whoami-${RUN}`, makeCurrent: true, gzippedCode });
  assert(res?.machineVersionId?.startsWith("ver_"), "finalize must return the public machineVersionId (ver_…)", res);
  const m = await admin.machines.get(WHOAMI);
  assert(m?.machine?.currentVersion?.id === res.machineVersionId, "makeCurrent must make the version current", m);
  return { machine: WHOAMI, existed, machineVersionId: res.machineVersionId, bundleBytes: code.length, gzipBytes: gzippedCode.length };
});

await check("authcontext-key-allowed", async () => {
  const s0 = await keyClient.machineInstances.getOrCreate(WHOAMI, names.whoami, { context: {} });
  assertState(s0, "getOrCreate");
  const s1 = await keyClient.machineInstances.sendEvent(WHOAMI, names.whoami, { event: "ping" });
  assert(s1.publicContext.pings === s0.publicContext.pings + 1, "ping must increment publicContext.pings", { s0, s1 });
  return { instance: names.whoami, pings: s1.publicContext.pings };
});

await check("authcontext-key-denied", async () => {
  const R = errors.RejectedByMachineAuthorizerError;
  await expectReject(otherClient.machineInstances.get(WHOAMI, names.whoami), R, "allowRead for sub u-other");
  await expectReject(otherClient.machineInstances.sendEvent(WHOAMI, names.whoami, { event: "ping" }), R, "allowWrite (event) for sub u-other");
  // 404 on a missing instance is decided before any authorizer runs (getOrCreate relies on it) …
  await expectReject(otherClient.machineInstances.get(WHOAMI, names.missing), errors.NotFoundError, "GET of a missing instance by sub u-other");
  // … so getOrCreate gets to the create, which allowWrite (initialization) rejects.
  await expectReject(otherClient.machineInstances.getOrCreate(WHOAMI, names.whoamiOther, { context: {} }), R, "allowWrite (initialization) for sub u-other");
  const g = await keyClient.machineInstances.get(WHOAMI, names.whoami);
  assert(g.publicContext.pings === 1, "rejected writes must not change the instance", g);
  return { rejected: ["read", "event", "initialization"] };
});

await check("authcontext-impersonation", async () => {
  // x-statebacked-act (client option actAs) with an org admin's token (spec 2.6).
  const asAllowed = new StateBackedClient(ADMIN_TOKEN, { ...opts, orgId: ORG_ID, actAs: { sub: "u-allowed" } });
  const asOther = new StateBackedClient(ADMIN_TOKEN, { ...opts, orgId: ORG_ID, actAs: { sub: "u-other" } });
  const s = await asAllowed.machineInstances.sendEvent(WHOAMI, names.whoami, { event: "ping" });
  assert(s.publicContext.pings === 2, "impersonated u-allowed must be able to ping", s);
  await expectReject(asOther.machineInstances.sendEvent(WHOAMI, names.whoami, { event: "ping" }), errors.RejectedByMachineAuthorizerError, "impersonated u-other");
  return { pings: s.publicContext.pings };
});

// --- token exchange with a custom identity provider ---------------------------------------------

const idpSecret = `statehost-compat-idp-secret-${RUN}-${crypto.randomBytes(16).toString("hex")}`;
const idpToken = (sub, secret = idpSecret) => {
  const iat = Math.floor(Date.now() / 1000);
  return hs256({ iss: IDP_ISS, aud: IDP_AUD, sub, email: `${sub}@example.com`, iat, exp: iat + 600 }, Buffer.from(secret, "utf8"));
};
const exchangeClient = (token, service = TOKEN_SERVICE) =>
  new StateBackedClient({ identityProviderToken: token, orgId: ORG_ID, tokenProviderService: service }, opts);

await check("exchange-setup", async () => {
  const idp = {
    aud: IDP_AUD,
    iss: IDP_ISS,
    algs: ["HS256"],
    key: Buffer.from(idpSecret, "utf8").toString("base64url"), // what smply's --key sends
    mapping: { "sub.$": "$.sub", "email.$": "$.email" },
  };
  const provider = { keyId: KEY_ID, service: TOKEN_SERVICE, mapping: { "sub.$": "$.sub", "email.$": "$.email", via: TOKEN_SERVICE } };
  assert((await admin.identityProviders.upsert(idp)) === undefined, "POST /idps must answer 204");
  assert((await admin.tokenProviders.upsert(provider)) === undefined, "POST /token-providers must answer 204");
  const idps = await collect((o) => admin.identityProviders.list(o), "idps");
  const mine = idps.find((d) => d.aud === IDP_AUD && d.iss === IDP_ISS);
  assert(mine && mine.algs?.includes("HS256") && sameJson(mine.mapping, idp.mapping), "GET /idps must list the upserted IdP", idps);
  assert(!("key" in mine), "GET /idps must never return keys", mine);
  const providers = await collect((o) => admin.tokenProviders.list(o), "tokenProviders");
  const tp = providers.find((p) => p.service === TOKEN_SERVICE);
  assert(tp && tp.keyId === KEY_ID && sameJson(tp.mapping, provider.mapping), "GET /token-providers must list the upserted provider", providers);
  return { idp: { aud: IDP_AUD, iss: IDP_ISS }, service: TOKEN_SERVICE };
});

await check("exchange-allowed", async () => {
  const c = exchangeClient(idpToken("u-allowed"));
  const s0 = await c.machineInstances.getOrCreate(WHOAMI, names.exchange, { context: {} });
  assertState(s0, "getOrCreate");
  const s1 = await c.machineInstances.sendEvent(WHOAMI, names.exchange, { event: "ping" });
  assert(s1.publicContext.pings === s0.publicContext.pings + 1, "ping must increment publicContext.pings", { s0, s1 });
  const { header, payload } = decodeJwt(await c.token());
  assert(header.kid === KEY_ID, "the exchanged token must be signed with the token provider's key", header);
  assert(typeof payload.exp === "number", "the exchanged token must carry a numeric exp", payload);
  const want = { sub: "u-allowed", email: "u-allowed@example.com", via: TOKEN_SERVICE };
  assert(sameJson(payload.act, want), "act must be the token provider mapping over the IdP mapping", { act: payload.act, want });
  return { instance: names.exchange, pings: s1.publicContext.pings, act: payload.act };
});

await check("exchange-denied", async () => {
  // A valid exchange whose mapping yields sub u-other: the token works, the machine says no.
  const other = exchangeClient(idpToken("u-other"));
  await expectReject(other.machineInstances.sendEvent(WHOAMI, names.exchange, { event: "ping" }), errors.RejectedByMachineAuthorizerError, "exchanged token for sub u-other");
  // A subject token with a bad signature, and an unknown token-provider service: no token at all.
  const badSig = exchangeClient(idpToken("u-allowed", "not-the-configured-secret-0123456789"));
  const e1 = await expectReject(badSig.machineInstances.get(WHOAMI, names.exchange), errors.ApiError, "exchange with a badly signed subject token");
  const badSvc = exchangeClient(idpToken("u-allowed"), "no-such-service");
  const e2 = await expectReject(badSvc.machineInstances.get(WHOAMI, names.exchange), errors.ApiError, "exchange for an unknown service");
  for (const e of [e1, e2]) assert(e.status === 400 || e.status === 403, "a failed exchange must be a 400 or 403", { name: e.name, status: e.status, code: e.code });
  return { badSignature: { status: e1.status, code: e1.code }, unknownService: { status: e2.status, code: e2.code } };
});

// --- version create with makeCurrent ------------------------------------------------------------

let v2Id;

await check("version-create", async () => {
  // The same toggle machine, with public.version = 2 in its initial context so that an instance
  // on v2 is told apart by behaviour. `code` (not gzippedCode): the client uploads it as is,
  // without ?gzip and without a content-encoding field.
  const code = await bundle({
    stdin: {
      contents: [
        'import machine, { allowRead, allowWrite } from "./toggle.ts";',
        "export { allowRead, allowWrite };",
        "export default machine.withContext({ ...machine.context, public: { ...machine.context.public, version: 2 } });",
      ].join("\n"),
      resolveDir: HERE,
      sourcefile: "toggle-v2.js",
      loader: "js",
    },
  });
  const res = await admin.machineVersions.create(MACHINE, { clientInfo: "v2", makeCurrent: true, code });
  assert(res?.machineVersionId?.startsWith("ver_"), "finalize must return the public machineVersionId (ver_…)", res);
  v2Id = res.machineVersionId;
  assert(v2Id !== v1Id, "a new version must get a new id", { v1Id, v2Id });
  const m = await admin.machines.get(MACHINE);
  assert(m.machine.currentVersion?.id === v2Id && m.machine.currentVersion?.clientInfo === "v2", "makeCurrent must make v2 current", m);
  const versions = await collect((o) => admin.machineVersions.list(MACHINE, o), "versions");
  assert(versions.some((v) => v.id === v2Id && v.clientInfo === "v2") && versions.some((v) => v.id === v1Id), "GET /machines/{m}/v must list v1 and v2", versions);
  return { machineVersionId: v2Id, bundleBytes: code.length };
});

await check("version-new-instance", async () => {
  const s = await keyClient.machineInstances.getOrCreate(MACHINE, names.v2, { context: {} });
  assertState(s, "getOrCreate");
  assert(s.publicContext.version === 2 && s.publicContext.toggleCount === 0, "a new instance must run the current version (v2)", s);
  const a = await admin.machineInstances.admin.get(MACHINE, names.v2);
  assert(a?.machineVersion?.id === v2Id, "admin view must report v2", a);
  // Existing instances stay on their version.
  const old = await admin.machineInstances.admin.get(MACHINE, names.key);
  assert(old?.machineVersion?.id === v1Id, "an existing instance must stay on its version", old);
  const s1 = await keyClient.machineInstances.sendEvent(MACHINE, names.key, { event: "toggle" });
  // (On a rerun against the same server, v1 is the previous run's v2, hence the comparison.)
  assert(s1.state === "inactive" && s1.publicContext.version === keyInstanceInitial.publicContext.version, "an existing instance must keep running v1", { created: keyInstanceInitial, now: s1 });
  return { instance: names.v2, publicContext: s.publicContext, existingInstanceVersion: old.machineVersion.id };
});

// --- list / get / admin / delete ----------------------------------------------------------------

await check("list-get-admin", async () => {
  const machines = await collect((o) => admin.machines.list(o), "machines");
  for (const slug of [MACHINE, WHOAMI]) {
    const m = machines.find((x) => x.slug === slug);
    assert(m && typeof m.createdAt === "string", `GET /machines must list ${slug} with createdAt`, machines);
  }
  assert(machines.find((x) => x.slug === MACHINE).currentVersion?.id === v2Id, "GET /machines must show the current version", machines);
  const got = await admin.machines.get(MACHINE);
  // (client 0.1.37's API types know machine.createdAt and machine.currentVersion only; `indexes`
  // came with 0.1.38, so it is not required here.)
  assert(typeof got.machine.createdAt === "string", "GET /machines/{m}: machine.createdAt required", got);
  const instances = await collect((o) => admin.machineInstances.list(MACHINE, o), "instances");
  for (const slug of [ANON_INSTANCE, names.key, names.v2]) {
    const i = instances.find((x) => x.slug === slug);
    assert(i && i.status === "running" && typeof i.createdAt === "string" && i.machineVersion?.id?.startsWith("ver_"), `GET /machines/{m}/i must list ${slug}`, instances);
  }
  const a = await admin.machineInstances.admin.get(MACHINE, ANON_INSTANCE);
  assert(a.state === anonState.state && a.context?.public?.toggleCount === anonState.publicContext.toggleCount, "admin view must show the state and the full context", { admin: a, last: anonState });
  assert(a.status === "running" && a.done === false && Array.isArray(a.tags) && typeof a.createdAt === "string" && a.machineVersion?.id, "admin view fields (status, done, tags, createdAt, machineVersion)", a);
  return { machines: machines.length, instances: instances.length, adminView: a };
});

await check("delete-instance", async () => {
  await keyClient.machineInstances.getOrCreate(MACHINE, names.del, { context: {} });
  // A confirmation that is not `true` must be refused (the client still adds the correct HMAC).
  await expectReject(
    admin.machineInstances.dangerously.delete(MACHINE, names.del, { dangerDataWillBeDeletedForever: false }),
    errors.ClientError,
    "delete without dangerDataWillBeDeletedForever: true",
  );
  await keyClient.machineInstances.get(MACHINE, names.del); // still there
  const r = await admin.machineInstances.dangerously.delete(MACHINE, names.del, { dangerDataWillBeDeletedForever: true });
  assert(r === undefined, "delete resolves with no value (204)", r);
  await expectReject(admin.machineInstances.get(MACHINE, names.del), errors.NotFoundError, "GET of the deleted instance (admin)");
  await expectReject(keyClient.machineInstances.get(MACHINE, names.del), errors.NotFoundError, "GET of the deleted instance (key token)");
  await expectReject(admin.machineInstances.admin.get(MACHINE, names.del), errors.NotFoundError, "admin GET of the deleted instance");
  const instances = await collect((o) => admin.machineInstances.list(MACHINE, o), "instances");
  assert(!instances.some((i) => i.slug === names.del), "the deleted instance must not be listed", instances);
  return { instance: names.del };
});

emit({ check: "all", ok: true, checks: passedCount() });
process.exit(0);
