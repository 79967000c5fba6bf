// The real-time machine of the compatibility harness (XState 4), deployed by test_realtime.py with
// `smply machines create --machine rt --node realtime.ts` and driven by realtime.mjs.
//
// - idle --bump--> idle: public.count + 1, console.log("bump <count>")            (stdout log)
// - idle --start--> ticking: entry console.log("ticking <ticks + 1>")              (stdout log)
// - ticking --after 1500 ms--> idle: public.ticks + 1, console.error("tick done <ticks>")
//                                                                                  (stderr log)
//   The delayed transition is the one update subscribers get without any client event.
// - private.secret never leaves the server: subscribers must get publicContext only, and the
//   harness checks that the secret appears in no WebSocket frame.
// - allowRead: everyone except authContext.sub === "blocked" (that subscriber gets the
//   subscription error 403 rejected-by-machine-authorizer).
// - allowWrite: everything.
//
// Every log line is unique within one instance (counters), so "each line exactly once" is checkable.
// Types are written inline (no @statebacked/machine import) so the file bundles with nothing but
// xstate installed next to it.
import { createMachine, assign } from "xstate";

const SECRET = "statehost-rt-private-secret-5f0c1e";

type Context = { public: { count: number; ticks: number }; private: { secret: string } };
type Event = { type: "bump" } | { type: "start" };

type AuthContext = { sub?: unknown } & Record<string, unknown>;
type ReadRequest = { machineInstanceName: string; authContext?: AuthContext };

export const allowRead = (req: ReadRequest): boolean => req.authContext?.sub !== "blocked";

export const allowWrite = (): boolean => true;

export default createMachine<Context, Event>({
  id: "rt",
  predictableActionArguments: true,
  context: { public: { count: 0, ticks: 0 }, private: { secret: SECRET } },
  initial: "idle",
  states: {
    idle: {
      on: {
        bump: {
          actions: [
            assign({ public: (ctx) => ({ ...ctx.public, count: ctx.public.count + 1 }) }),
            (ctx) => console.log("bump " + ctx.public.count),
          ],
        },
        start: "ticking",
      },
    },
    ticking: {
      entry: (ctx) => console.log("ticking " + (ctx.public.ticks + 1)),
      after: {
        1500: {
          target: "idle",
          actions: [
            assign({ public: (ctx) => ({ ...ctx.public, ticks: ctx.public.ticks + 1 }) }),
            (ctx) => console.error("tick done " + ctx.public.ticks),
          ],
        },
      },
    },
  },
});
