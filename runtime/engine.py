"""The engine interface: prepare a bundle once, then step instances in fresh sandboxes.

Two engines implement it (QuickJS native now; QuickJS in wasm under wasmtime later). Callers hold
only these types, so an engine can be swapped without touching them. Every method here is
synchronous and may block for milliseconds: call it through :class:`runtime.executor.Executor`,
never on the event loop. No method raises for a guest fault; faults come back as an
:class:`~runtime.limits.Outcome` on the returned value.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from .bundle import MachineBundle
from .limits import Limits
from .protocol import (
    Described,
    EffectResult,
    Invoked,
    ReadDecision,
    ReadRequest,
    Round,
    StateDescription,
    StepRequest,
    Structured,
)

__all__ = ["Engine", "GuestSandbox", "PreparedMachine", "PreparedMigration", "SandboxInstance", "ScriptSandbox"]


class GuestSandbox(abc.ABC):
    """A sandbox the host loop (runtime.settle.drive) can drive. Not thread-safe: one caller."""

    @abc.abstractmethod
    def resume(self, results: Sequence[EffectResult], now_ms: int) -> Round:
        """Feed effect results (fetch responses) back to the guest and pump until quiescent."""

    @abc.abstractmethod
    def fire_timers(self, now_ms: int) -> Round:
        """Run the ephemeral guest timers due at ``now_ms`` and pump until quiescent."""

    @abc.abstractmethod
    def footprint(self) -> int:
        """Bytes of memory the live sandbox holds (an upper bound where the engine cannot tell
        exactly; 0 once closed). Never runs guest code: cheap enough to ask on the event loop."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the sandbox. Idempotent. Never runs guest code (no exit actions)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SandboxInstance(GuestSandbox):
    """One live machine inside one sandbox, for one settle window."""

    @abc.abstractmethod
    def begin(self, request: StepRequest, now_ms: int) -> Round:
        """Authorize, create or restore, and deliver the request's event; pump until quiescent."""

    @abc.abstractmethod
    def new_window(self) -> None:
        """A parked sandbox starts serving a new event: reset the per-event budgets (fetches, log
        lines and bytes) that a fresh sandbox would start with."""

    @abc.abstractmethod
    def deliver(self, event: Mapping[str, Any], auth_context: Mapping[str, Any] | None, now_ms: int) -> Round:
        """Deliver one more event into the live session (the window is still open).

        A denied or invalid event comes back as such and leaves the session as it was.
        """


class ScriptSandbox(GuestSandbox):
    """The prelude without a machine: runs scripts with the same host loop (in-sandbox tests)."""

    @abc.abstractmethod
    def run(self, code: str, now_ms: int) -> Round:
        """Evaluate a script after the prelude and pump until quiescent."""

    @abc.abstractmethod
    def evaluate_json(self, expression: str) -> Any:
        """The JSON value of an expression (``JSON.stringify`` in the guest, parsed by the host)."""


class PreparedMachine(abc.ABC):
    """A validated bundle, ready to instantiate."""

    bundle: MachineBundle
    major: int
    """The XState major the machine was made with (4 or 5)."""
    exports: tuple[str, ...]
    limits: Limits

    @abc.abstractmethod
    def new_instance(self) -> SandboxInstance:
        """A fresh sandbox holding the machine: nothing of another window survives into it."""

    @abc.abstractmethod
    def authorize_read(self, request: ReadRequest) -> ReadDecision:
        """Run the machine's allowRead in a sandbox."""

    @abc.abstractmethod
    def describe(self, persisted: Mapping[str, Any], now_ms: int) -> Described:
        """A persisted instance of this machine as state paths and context (for migrations)."""

    @abc.abstractmethod
    def structure(self, now_ms: int) -> Structured:
        """The machine's shape for drawing it (states, nesting, transitions, guards' names, delays,
        invokes), read from the loaded machine in a fresh sandbox: the harness op ``structure``
        (js_shims/host.d.ts ``Structured``), a one-shot call like ``describe``. Runs no user code
        beyond loading the module."""

    @abc.abstractmethod
    def invoke(self, path: Sequence[str], arg: Any, now_ms: int) -> Invoked:
        """Call the module's exported function at ``path`` (``("httpApiMapper", slug, "handler")``)
        with one JSON argument, in a fresh sandbox, and wait for its promise. It may use the
        sandbox's pure APIs (crypto, text, URL), not ``fetch``."""


class PreparedMigration(abc.ABC):
    """A validated migration module (``upgradeState`` and ``upgradeContext``), ready to run."""

    bundle: MachineBundle
    limits: Limits

    @abc.abstractmethod
    def upgrade(self, description: StateDescription, now_ms: int) -> Described:
        """Map an instance through the migration, in a fresh sandbox with the machine limits."""


class Engine(abc.ABC):
    name: str

    @abc.abstractmethod
    def prepare_migration(self, bundle: MachineBundle, limits: Limits | None = None) -> PreparedMigration:
        """Load a migration bundle once and check its exports.

        Raises :class:`runtime.errors.InvalidMachineError` when it does not export ``upgradeState``
        and ``upgradeContext`` functions, or fails to evaluate.
        """

    @abc.abstractmethod
    def script_sandbox(self, limits: Limits | None = None) -> ScriptSandbox:
        """A sandbox holding only the prelude."""

    @abc.abstractmethod
    def prepare(self, bundle: MachineBundle, limits: Limits | None = None) -> PreparedMachine:
        """Load the bundle once and check its exports.

        Raises :class:`runtime.errors.InvalidMachineError` when the module is not a machine plus
        authorizers, or fails to evaluate.
        """
