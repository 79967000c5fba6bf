// internal/host.js: the guest side of the host bridge, shared by every shim through the prelude's
// function scope as `H`. Nothing here is put on globalThis. See host.d.ts for the contract.

const H = (() => {
  const RealDate = Date;
  // Captured before any user code runs: a machine may replace JSON.stringify to forge the replies the
  // host reads (the host validates them anyway).
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  let nowMs = 0;

  // ---- errors ----------------------------------------------------------------------------------
  class NotSupportedError extends Error {
    constructor(what) {
      super(`${what} is not supported in the statehost sandbox`);
      this.name = "NotSupportedError";
    }
  }

  function errorFrom(e) {
    const err = new (e && e.name === "TypeError" ? TypeError : Error)(String(e && e.message));
    if (e && e.name && e.name !== "TypeError") err.name = e.name;
    return err;
  }

  // ---- base64 (binary-safe, over quickjs's atob/btoa) --------------------------------------------
  const realBtoa = globalThis.btoa;
  const realAtob = globalThis.atob;

  function bytesToBase64(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return realBtoa(binary);
  }

  function base64ToBytes(b64) {
    const binary = realAtob(b64);
    const out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out;
  }

  // ---- randomness: a ChaCha20 DRBG seeded by the host for every entry --------------------------
  // The host sends 32 bytes from its CSPRNG with each entry; crypto.getRandomValues, randomUUID and
  // Math.random draw from this stream. Seeding per entry keeps a step reproducible given its seed.
  const state = new Uint32Array(16);
  const block = new Uint32Array(16);
  const blockBytes = new Uint8Array(block.buffer);
  let blockUsed = 64;

  function rotl(x, n) {
    return (x << n) | (x >>> (32 - n));
  }

  function quarter(x, a, b, c, d) {
    x[a] = (x[a] + x[b]) | 0; x[d] = rotl(x[d] ^ x[a], 16);
    x[c] = (x[c] + x[d]) | 0; x[b] = rotl(x[b] ^ x[c], 12);
    x[a] = (x[a] + x[b]) | 0; x[d] = rotl(x[d] ^ x[a], 8);
    x[c] = (x[c] + x[d]) | 0; x[b] = rotl(x[b] ^ x[c], 7);
  }

  function nextBlock() {
    block.set(state);
    for (let i = 0; i < 10; i++) {
      quarter(block, 0, 4, 8, 12); quarter(block, 1, 5, 9, 13);
      quarter(block, 2, 6, 10, 14); quarter(block, 3, 7, 11, 15);
      quarter(block, 0, 5, 10, 15); quarter(block, 1, 6, 11, 12);
      quarter(block, 2, 7, 8, 13); quarter(block, 3, 4, 9, 14);
    }
    for (let i = 0; i < 16; i++) block[i] = (block[i] + state[i]) | 0;
    state[12] = (state[12] + 1) | 0;
    if (state[12] === 0) state[13] = (state[13] + 1) | 0;
    blockUsed = 0;
  }

  function seed(b64) {
    const key = base64ToBytes(b64);
    if (key.length !== 32) throw new Error("statehost: the host must send a 32-byte seed");
    state.set([0x61707865, 0x3320646e, 0x79622d32, 0x6b206574]);
    const view = new DataView(key.buffer);
    for (let i = 0; i < 8; i++) state[4 + i] = view.getUint32(i * 4, true);
    state[12] = 0; state[13] = 0; state[14] = 0; state[15] = 0;
    blockUsed = 64;
  }

  function fillRandom(bytes) {
    for (let i = 0; i < bytes.length; i++) {
      if (blockUsed === 64) nextBlock();
      bytes[i] = blockBytes[blockUsed++];
    }
    return bytes;
  }

  const scratch = new Uint8Array(8);
  function random() {
    fillRandom(scratch);
    // 53 random bits -> [0, 1)
    const hi = ((scratch[0] << 13) | (scratch[1] << 5) | (scratch[2] >>> 3)) >>> 0;
    const lo = ((scratch[3] << 24) | (scratch[4] << 16) | (scratch[5] << 8) | scratch[6]) >>> 0;
    return (hi * 4294967296 + lo) / 9007199254740992;
  }

  // ---- the outbox ---------------------------------------------------------------------------------
  // ---- scopes: what belongs to one instance's session --------------------------------------------
  // A sandbox serving one instance has one scope. A VM hosting many live actors (runtime/actors.py)
  // gives each its own: outbox, waiters, log lines, ephemeral timers and the performance.now()
  // origin never cross between actors. The host enters one actor at a time and pumps every promise
  // job before the next entry, so the current scope is always the one whose code runs.
  function newScope() {
    return { nextRequestId: 1, outbox: [], pending: new Map(), logs: [], nextTimerId: 1, timers: new Map(), timeOrigin: null };
  }
  let S = newScope();
  function use(scope) {
    S = scope;
  }
  // A new settle window of a live actor starts as a fresh sandbox would: request and timer ids from
  // 1, performance.now() from 0. Only when nothing of the previous window is left.
  function freshWindow() {
    if (S.pending.size === 0 && S.timers.size === 0 && S.outbox.length === 0) {
      S.nextRequestId = 1;
      S.nextTimerId = 1;
      S.timeOrigin = null;
    }
  }

  function request(kind, payload) {
    const id = S.nextRequestId++;
    S.outbox.push(Object.assign({ id, kind }, payload));
    return new Promise((resolve, reject) => S.pending.set(id, { resolve, reject }));
  }

  function drainRequests() {
    const drained = S.outbox;
    S.outbox = [];
    return drained;
  }

  function settle(results) {
    const pending = S.pending;
    for (const r of results) {
      const waiter = pending.get(r.id);
      if (!waiter) continue;
      pending.delete(r.id);
      if (r.ok) waiter.resolve(r.value);
      else waiter.reject(errorFrom(r.error));
    }
  }

  // ---- log lines ------------------------------------------------------------------------------------
  function log(stream, level, text) {
    S.logs.push({ stream, level, text, timeMs: nowMs });
  }
  function drainLogs() {
    const drained = S.logs;
    S.logs = [];
    return drained;
  }

  // ---- ephemeral timers (setTimeout and XState timers of child actors) --------------------------
  // They never sleep: the host reads nextDue() and calls fire() when its clock reaches it, inside
  // the event's settle window. Timers of the instance itself are durable and go through the host's
  // timer table instead (harness).
  function setTimer(fn, ms, args, repeat) {
    const id = S.nextTimerId++;
    const delay = Math.max(0, Number(ms) || 0);
    S.timers.set(id, { fn, args, due: nowMs + delay, delay, repeat, seq: id });
    return id;
  }

  function clearTimer(id) {
    S.timers.delete(id);
  }

  function nextDue() {
    let best = null;
    for (const t of S.timers.values()) if (best === null || t.due < best) best = t.due;
    return best;
  }

  function fireDue() {
    const timers = S.timers;
    for (;;) {
      let next = null;
      for (const [id, t] of timers) {
        if (t.due <= nowMs && (next === null || t.due < next[1].due || (t.due === next[1].due && t.seq < next[1].seq))) {
          next = [id, t];
        }
      }
      if (next === null) return;
      const [id, t] = next;
      if (t.repeat) {
        t.due = nowMs + Math.max(1, t.delay);
        t.seq = S.nextTimerId++;
      } else {
        timers.delete(id);
      }
      if (typeof t.fn === "function") t.fn.apply(undefined, t.args);
    }
  }

  // ---- frozen time ------------------------------------------------------------------------------
  function FrozenDate(...args) {
    if (!new.target) return new RealDate(nowMs).toString();
    return args.length === 0 ? new RealDate(nowMs) : new RealDate(...args);
  }
  FrozenDate.prototype = RealDate.prototype;
  Object.defineProperty(RealDate.prototype, "constructor", { value: FrozenDate, writable: true, configurable: true });
  FrozenDate.now = () => nowMs;
  FrozenDate.parse = RealDate.parse;
  FrozenDate.UTC = RealDate.UTC;
  globalThis.Date = FrozenDate;
  // No high-resolution timers: performance.now() advances only with the host's clock.
  const performance = {
    now() {
      if (S.timeOrigin === null) S.timeOrigin = nowMs;
      return nowMs - S.timeOrigin;
    },
    get timeOrigin() {
      return S.timeOrigin === null ? nowMs : S.timeOrigin;
    },
  };
  Object.defineProperty(globalThis, "performance", { value: performance, writable: true, configurable: true, enumerable: false });
  Math.random = random;

  function begin(ctx) {
    nowMs = Number(ctx.nowMs);
    if (ctx.seed) seed(ctx.seed);
  }

  // ---- lazily compiled shims ------------------------------------------------------------------
  // The large, rarely needed shims (URL, fetch, crypto, ...) are compiled on first use of one of
  // their globals, so a fresh sandbox pays only for what the machine touches (runtime/shims.py).
  // Function is captured now, before any user code could replace it.
  const FunctionCtor = Function;
  let self = null;
  function lazy(file, names, source) {
    let loaded = false;
    const load = () => {
      if (loaded) return;
      loaded = true;
      for (const name of names) delete globalThis[name];
      new FunctionCtor("H", `"use strict";\n${source}\n//# sourceURL=${file}`)(self);
    };
    for (const name of names) {
      Object.defineProperty(globalThis, name, {
        get() {
          load();
          return globalThis[name];
        },
        set(value) {
          load();
          Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
        },
        configurable: true,
        enumerable: false,
      });
    }
  }

  self = {
    stringify,
    parse,
    lazy,
    NotSupportedError,
    bytesToBase64,
    base64ToBytes,
    fillRandom,
    random,
    request,
    drainRequests,
    settle,
    pendingCount: () => S.pending.size,
    newScope,
    use,
    scope: () => S,
    freshWindow,
    log,
    drainLogs,
    setTimer,
    clearTimer,
    nextDue,
    fireDue,
    begin,
    now: () => nowMs,
  };
  return self;
})();
