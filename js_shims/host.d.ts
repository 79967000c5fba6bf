// The one declaration of everything that crosses between the Python host and the guest.
//
// Loading order (runtime/shims.py): every file of internal/, web/, statebacked/ and harness/ is
// concatenated, in the order listed there, into ONE strict-mode IIFE: the "prelude". Files share that
// function scope (so `H` below is visible to every shim) and nothing but the Web APIs is put on
// globalThis. The prelude defines globalThis.__statehost_entry; the host captures that function and
// deletes the global before any user code runs. Then the host evaluates the machine bundle (which
// defines the global `__m`) and calls entry("attach"), which captures and deletes `__m`.
//
// The guest never calls into Python. Requests for the host (fetch, host cryptography) are queued in
// an outbox that the host drains after each guest entry (runtime/engines/quickjs_native.py).

// ---- host -> guest: the entry function -------------------------------------------------------
// Every argument and return value is a JSON string. The entry never throws for guest faults: a
// fault comes back as { fault: GuestFault } inside the reply.
declare function __statehost_entry(op: "attach", arg: string /* AttachRequest */): string /* AttachReply */;
declare function __statehost_entry(op: "begin", arg: string /* BeginRequest */): string /* "" */;
declare function __statehost_entry(op: "send", arg: string /* SendRequest */): string /* "" | { denied: true } */;
declare function __statehost_entry(op: "settle", arg: string /* SettleRequest */): string /* "" */;
declare function __statehost_entry(op: "fire", arg: string /* FireRequest */): string /* "" */;
declare function __statehost_entry(op: "collect", arg: string /* "{}" | ActorSlot */): string /* Round */;
declare function __statehost_entry(op: "authorize_read", arg: string /* ReadRequest */): string /* Decision */;
declare function __statehost_entry(op: "eval", arg: string /* { code } */): string /* "" */;
declare function __statehost_entry(op: "describe", arg: string /* DescribeRequest */): string /* Described */;
declare function __statehost_entry(op: "structure", arg: string /* StepContext */): string /* Structured */;
declare function __statehost_entry(op: "migrate", arg: string /* MigrateRequest */): string /* Described | { exports } */;
declare function __statehost_entry(op: "drop", arg: string /* DropRequest */): string /* { live: number } */;

// ---- live actors sharing one VM (runtime/actors.py) --------------------------------------------
// A VM may host many live actors of its one machine. Every request of begin, send, settle, fire and
// collect may then carry `actor`, the host's key for the instance: `begin` with a key makes a fresh
// slot for it (replacing any, which is dropped without stop()), the other ops select that slot
// (an unknown key is a fault). A slot has its own session, recorder, spawned references and H scope
// (outbox, pending requests, log lines, ephemeral timers, performance.now() origin), so nothing of
// one actor's window reaches another's. Without `actor`, the sandbox's own single slot is used.
interface ActorSlot { actor?: string }
interface DropRequest { actors: string[] }   // forget these slots (eviction); nothing of theirs runs

interface AttachRequest { runtimeApi: "bundle" | "global" }  // where interpret/createActor come from
interface AttachReply { major: 4 | 5; exports: string[]; fault?: GuestFault }

interface StepContext {
  nowMs: number;            // Date.now() and new Date() are frozen to this for the entry
  seed: string;             // base64 of 32 random bytes from the host; seeds crypto and Math.random
}

// Migrations (wire-api 7.8) see an instance as state paths, the same for both XState majors.
interface Description {
  paths: string[][];                                  // leaf state paths, one per active parallel region
  history: { parent: string[]; paths: string[][] }[]; // per state owning a history node: what it remembers
  context: object;
}
interface DescribeRequest extends StepContext { snapshot: Persisted }   // the attached machine reads it
interface MigrateRequest extends StepContext {   // the sandbox holds a migration bundle, not a machine
  check?: true;                                  // only check the exports (upgradeState, upgradeContext)
  description?: Description;
}
interface Described { description: Description; logs: LogLine[]; fault?: GuestFault }

// The machine's shape for drawing it (harness/structure.js), the same for both XState majors.
interface StructureNode {
  id: string; key: string; path: string[];
  type: "atomic" | "compound" | "parallel" | "final" | "history";
  initial?: string;                      // compound: the initial child's key
  history?: "shallow" | "deep"; historyTarget?: string;
  tags: string[]; description?: string;
  entry: string[]; exit: string[];       // action names ("(inline)" for anonymous functions)
  invoke: { id: string; src: string }[];
  transitions: {
    event: string;                       // "" for eventless (always) transitions
    kind: "on" | "always" | "after" | "done" | "invoke-done" | "invoke-error" | "invoke-snapshot";
    targets: string[];                   // state ids; [] for a targetless transition
    guard?: string; delay?: number | string; reenter: boolean; actions: string[];
  }[];
  states: StructureNode[];
}
interface Structured { structure: { major: 4 | 5; id: string; root: StructureNode }; logs: LogLine[]; fault?: GuestFault }

interface BeginRequest extends StepContext, ActorSlot {
  // restore: load the snapshot, deliver nothing, persist it again. upgrade: build the instance from
  // `description` in this machine (validated) and record one transition whose event is `event`.
  kind: "create" | "event" | "restore" | "upgrade";
  description?: Description;
  instanceName: string;
  authContext: object | null;   // null: a host-originated event (timer); allowWrite is not run
  parent?: { machineName: string; machineInstanceName: string } | null;  // who spawned it: sendParent
  context?: object;             // create: caller-supplied context merged over the machine's own
  snapshot?: Persisted;         // event: what the last committed Round returned
  event?: { type: string; [k: string]: unknown };
}

interface SendRequest extends StepContext, ActorSlot {   // an event joining the live session of this window
  window?: true;   // a live actor's first event of a new window: ids and performance.now() restart
  instanceName: string;
  authContext: object | null;
  event: { type: string; [k: string]: unknown };
}

interface Persisted {            // opaque to the server; produced and consumed by the harness
  major: 4 | 5;
  xstate: unknown;               // v4 State JSON without actions/children; v5 getPersistedSnapshot()
  inflight: string[];            // ids of services running when this was committed (at-most-once)
}

interface SettleRequest extends StepContext, ActorSlot { results: HostResult[] }
interface FireRequest extends StepContext, ActorSlot {}      // fire every ephemeral timer due at nowMs

interface ReadRequest extends StepContext {
  instanceName: string; state: unknown; context: object; authContext: object;
}
interface Decision { allowed: boolean; logs: LogLine[]; fault?: GuestFault }

// ---- guest -> host: what one collect returns ---------------------------------------------------
interface Round {
  transitions: Transition[];     // in order; empty when nothing changed
  persisted: Persisted | null;   // after the last transition (null when nothing changed)
  timers: TimerOp[];             // durable timers of the instance itself, in the order they happened
  requests: HostRequest[];       // drained outbox
  logs: LogLine[];
  pendingRequests: number;       // requests issued and not yet settled
  nextTimerMs: number | null;    // earliest ephemeral guest timer (setTimeout, child machines)
  fault?: GuestFault;
  denied?: boolean;              // allowWrite said no (or threw): nothing ran
}

interface Transition {
  state: unknown;                // v4 state.value / v5 snapshot.value
  context: unknown;
  publicContext: object;         // context.public if it is an object, else {}
  tags: string[];
  done: boolean;
  event: { type: string; [k: string]: unknown };
  output?: unknown;              // when done: v4 the top-level final state's data, v5 snapshot.output
}

type TimerOp =
  | { op: "set"; id: string | null; delayMs: number; event: { type: string }; target?: MessageTarget }
  | { op: "cancel"; id: string }
  | { op: "cancelAll" };

// A message to another persistent instance, or the creation of a persistent child (wire-api 7.6):
// queued by the host with the round, delivered after it commits.
interface MessageTarget {
  machineName: string; machineInstanceName: string; kind: "event" | "spawn";
  machineVersionId?: string; context?: object;   // spawn only
  invokeId?: string;   // spawn by persistentInvocableSource: the parent gets done.invoke.<invokeId>
}

interface LogLine { stream: "stdout" | "stderr"; level: string; text: string; timeMs: number }

interface GuestFault { kind: "error" | "stack" | "memory"; name: string; message: string; stack?: string }

// ---- the outbox ------------------------------------------------------------------------------------
// kind "fetch" is an effect: the host performs it only after committing the round that issued it.
// kind "crypto.*" is pure: the host performs it at once, inside the same entry loop.
type HostRequest =
  | { id: number; kind: "fetch"; url: string; method: string; headers: [string, string][]; body: string | null /* base64 */ }
  | { id: number; kind: "crypto.digest"; algorithm: "SHA-1" | "SHA-256" | "SHA-384" | "SHA-512"; data: string /* base64 */ }
  | { id: number; kind: "crypto.hmac"; hash: "SHA-1" | "SHA-256" | "SHA-384" | "SHA-512"; key: string; data: string /* base64 */ };

type HostResult =
  | { id: number; ok: true; value: unknown }        // fetch: FetchResult; crypto.*: base64 string
  | { id: number; ok: false; error: { name: string; message: string } };

interface FetchResult {
  status: number; statusText: string; url: string; redirected: boolean;
  headers: [string, string][]; body: string /* base64 */;
}
