// The authContext probe of the compatibility harness (XState 4). Machines cannot see authContext in
// actions, so the harness proves where authContext comes from through the authorizers: only a caller
// whose authContext.sub is "u-allowed" may read, create instances or send events; anyone else gets
// 403 rejected-by-machine-authorizer. quickstart.mjs deploys it (as admin, through the client) and
// drives it with a key-signed token, an exchanged token and admin impersonation (x-statebacked-act).
import { createMachine, assign } from "xstate";

type Context = { public: { pings: number } };
type Event = { type: "ping" };

type Request = { authContext?: { sub?: unknown } };

const isAllowed = (req: Request): boolean => req.authContext?.sub === "u-allowed";

export const allowRead = (req: Request): boolean => isAllowed(req);

export const allowWrite = (req: Request): boolean => isAllowed(req);

export default createMachine<Context, Event>({
  id: "whoami",
  predictableActionArguments: true,
  context: { public: { pings: 0 } },
  initial: "ready",
  states: {
    ready: {
      on: {
        ping: {
          actions: assign({
            public: (ctx) => ({ ...ctx.public, pings: ctx.public.pings + 1 }),
          }),
        },
      },
    },
  },
});
