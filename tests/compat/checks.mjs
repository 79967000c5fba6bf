// The reporting conventions quickstart.mjs and realtime.mjs share: one JSON line per passed check,
// {"check": "<name>", "ok": true, ...details}; the first failure prints its line, a readable
// message on stderr, and exits 1.

let passed = 0;

export const passedCount = () => passed;

export function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

/** The environment variable `name`, or `fallback`; exits 2 naming it when neither exists. */
export function env(script, name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === "") {
    if (fallback !== undefined) return fallback;
    process.stderr.write(`${script}: missing environment variable ${name}\n`);
    process.exit(2);
  }
  return v;
}

export function describeError(e) {
  if (!(e instanceof Error)) return String(e);
  const bits = [`${e.name}: ${e.message}`];
  if (e.status !== undefined) bits.push(`status ${e.status}`);
  if (e.code !== undefined) bits.push(`code ${e.code}`);
  // undici's "fetch failed" hides the reason (ECONNREFUSED, bad port, …) in `cause`.
  if (e.cause) bits.push(`cause: ${e.cause instanceof Error ? `${e.cause.name}: ${e.cause.message}` : String(e.cause)}`);
  return bits.join("; ");
}

export class CheckFailure extends Error {
  constructor(message, details) {
    super(message);
    this.details = details;
  }
}

export function assert(cond, message, details) {
  if (!cond) throw new CheckFailure(message, details);
}

/** Runs one named check within `timeoutMs`; its return value becomes the line's details. */
export async function runCheck(script, name, fn, timeoutMs) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    const details = (await Promise.race([fn(), timeout])) ?? {};
    emit({ check: name, ok: true, ...details });
    passed += 1;
    return details;
  } catch (e) {
    const error = e instanceof CheckFailure ? e.message : describeError(e);
    emit({ check: name, ok: false, error, ...(e?.details !== undefined ? { details: e.details } : {}) });
    process.stderr.write(`${script}: FAILED check "${name}": ${error}\n`);
    if (e?.details !== undefined) process.stderr.write(`  details: ${JSON.stringify(e.details)}\n`);
    process.exit(1);
  } finally {
    clearTimeout(timer);
  }
}
