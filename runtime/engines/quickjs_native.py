"""QuickJS-NG, native (PyPI ``quickjs-ng``): the default engine.

Decision log:

- A fresh ``quickjs.Context`` (one JSRuntime + one JSContext) per settle window and per authorizer
  call: about 5 ms, and nothing of one window (module-level state, polluted prototypes) survives
  into the next. Warm contexts would be ~50x cheaper but share a heap between instances.
- Limits are set before the first line of JS: memory, stack (1 MiB default, never 0: 0 disables the
  check and overflows segfault), and a time limit per call. The time limit uses the process CPU
  clock and is re-armed on every call and every pending job, so the host also caps the jobs pumped
  and the wall time per entry (runtime/engines/guest_loop.py, shared with the WASM engine).
- Host callables cannot coexist with a time limit, so the guest never calls Python: requests go into
  an outbox (js_shims/internal/host.js) that the host drains between calls. Pure requests (crypto)
  are answered inside the entry; fetches are effects, handed to the caller to commit first.
- After out-of-memory or an interrupt the context is poisoned: it is discarded, never reused.
- Contexts are used from worker threads one at a time (the binding releases the GIL); the threads
  need C stacks well above the JS stack limit (runtime.executor makes 8 MiB ones).
- Not a memory-safety boundary: a QuickJS bug reachable from JS owns the process. The WASM engine
  (quickjs_wasm.py) is the hardened choice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import quickjs

from ..limits import Limits, Outcome
from ..shims import prelude
from .guest_loop import VM, GuestDataError, GuestLoopEngine, RuntimeApiSource, VMError, VMProvider

__all__ = ["QuickJSNativeEngine"]


def _wrap(exc: quickjs.JSException) -> VMError:
    return VMError(str(exc), Outcome.EXCEEDED_STACK if isinstance(exc, quickjs.StackOverflow) else None)


class _NativeVM(VM):
    def __init__(self, scripts: Sequence[str], limits: Limits) -> None:
        self.ctx = quickjs.Context()
        self.ctx.set_memory_limit(limits.memory_bytes)
        self.ctx.set_max_stack_size(limits.stack_bytes)
        self.ctx.set_time_limit(limits.cpu_ms / 1000)
        try:
            self.ctx.eval(prelude())
            self.entry = self.ctx.get("__statehost_entry")
            self.ctx.eval("delete globalThis.__statehost_entry")
            for script in scripts:
                self.ctx.eval(script)
        except quickjs.JSException as exc:
            raise _wrap(exc) from None

    def eval(self, code: str) -> str | None:
        try:
            value = self.ctx.eval(code)
        except quickjs.JSException as exc:
            raise _wrap(exc) from None
        return value if isinstance(value, str) else None

    def call_entry(self, op: str, arg: str) -> str | None:
        try:
            reply = self.entry(op, arg)
        except quickjs.JSException as exc:
            raise _wrap(exc) from None
        except TypeError as exc:  # the binding cannot convert what came back (e.g. a rope string)
            raise GuestDataError(f"the sandbox answered {op} with an unreadable value: {exc}") from None
        if reply is None:
            return None
        if not isinstance(reply, str):
            raise GuestDataError(f"the sandbox answered {op} with {type(reply).__name__}, not JSON text")
        return reply

    def run_jobs(self, max_jobs: int, deadline: float) -> int:
        # The CPU limit is re-armed for every job, so the wall clock is checked after every one.
        ran = 0
        try:
            while ran < max_jobs and self.ctx.execute_pending_job():
                ran += 1
                if time.monotonic() > deadline:
                    break
        except quickjs.JSException as exc:
            raise _wrap(exc) from None
        return ran

    def footprint(self) -> int:
        return int(self.ctx.memory()["malloc_size"])  # QuickJS's own heap, as its limit counts it

    def heap_used(self) -> int:
        return self.footprint()

    def collect_garbage(self) -> None:
        self.ctx.gc()

    def close(self) -> None:
        pass  # the context is freed with its last reference


class _NativeProvider(VMProvider):
    def open(self, scripts: Sequence[str], limits: Limits) -> VM:
        return _NativeVM(scripts, limits)


class QuickJSNativeEngine(GuestLoopEngine):
    """QuickJS-NG through the ``quickjs-ng`` binding."""

    name = "quickjs-native"

    def __init__(self, runtime_api: RuntimeApiSource | None = None) -> None:
        super().__init__(_NativeProvider(), runtime_api)
