// Version 2 of the compatibility harness's toggle (upgrade.mjs): the states are renamed
// inactive -> off and active -> on, and public.toggleCount becomes public.flips.
import { createMachine, assign } from "xstate";

type Context = { public: { flips: number } };

export const allowRead = (): boolean => true;
export const allowWrite = (): boolean => true;

export default createMachine<Context>({
  id: "toggle",
  predictableActionArguments: true,
  context: { public: { flips: 0 } },
  initial: "off",
  states: {
    off: { on: { toggle: "on" } },
    on: {
      entry: assign({ public: (ctx) => ({ flips: ctx.public.flips + 1 }) }),
      on: { toggle: "off" },
    },
  },
});
