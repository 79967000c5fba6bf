// The quickstart machine of the compatibility harness (XState 4), deployed with
// `smply machines create --machine toggle --node toggle.ts` and driven by quickstart.mjs.
//
// - inactive <-> active on "toggle"; entering "active" increments public.toggleCount.
// - allowRead: everyone.
// - allowWrite: everyone may create instances and send events, except events of type "forbidden",
//   which are always rejected (403 rejected-by-machine-authorizer) - the harness's denied write.
//
// Types are written inline (no @statebacked/machine import) so the file bundles with nothing but
// xstate installed next to it.
import { createMachine, assign } from "xstate";

type Context = { public: { toggleCount: number } };
type Event = { type: "toggle" };

type AuthContext = Record<string, unknown>;
type WriteRequest =
  | { type: "initialization"; machineInstanceName: string; context: unknown; authContext: AuthContext }
  | {
      type: "event";
      machineInstanceName: string;
      state: unknown;
      context: Context;
      event: { type: string };
      authContext: AuthContext;
    };

export const allowRead = (): boolean => true;

export const allowWrite = (req: WriteRequest): boolean =>
  req.type === "initialization" || req.event.type !== "forbidden";

export default createMachine<Context, Event>({
  id: "toggle",
  predictableActionArguments: true,
  context: { public: { toggleCount: 0 } },
  initial: "inactive",
  states: {
    inactive: {
      on: { toggle: "active" },
    },
    active: {
      entry: assign({
        public: (ctx) => ({ ...ctx.public, toggleCount: ctx.public.toggleCount + 1 }),
      }),
      on: { toggle: "inactive" },
    },
  },
});
