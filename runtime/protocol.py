"""Values that cross between the server and the runtime, and between the runtime and the guest.

Everything here is a frozen dataclass of plain JSON-compatible values. The persisted instance
(``Round.persisted``) is opaque to the server: it stores it and hands it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .limits import Outcome

__all__ = [
    "Described",
    "EffectResult",
    "FetchRequest",
    "FetchResponse",
    "Invoked",
    "LogLine",
    "ReadDecision",
    "ReadRequest",
    "Round",
    "StateDescription",
    "StepRequest",
    "TimerOp",
    "Transition",
    "Usage",
]

JSON = Any
"""A value that survives json.dumps/json.loads unchanged."""


@dataclass(frozen=True)
class StateDescription:
    """An instance as migrations see it (wire-api 7.8), the same for both XState majors.

    ``paths``: the leaf state paths (one per active parallel region); ``history``: for each state
    owning a history node, the paths it remembers (``parent`` is that state's path in the version
    that produced the description); ``context``: the full context.
    """

    paths: tuple[tuple[str, ...], ...]
    history: tuple[tuple[tuple[str, ...], tuple[tuple[str, ...], ...]], ...]
    context: JSON

    def to_json(self) -> dict[str, JSON]:
        return {
            "paths": [list(p) for p in self.paths],
            "history": [{"parent": list(parent), "paths": [list(p) for p in paths]} for parent, paths in self.history],
            "context": self.context,
        }

    @staticmethod
    def from_json(raw: Mapping[str, JSON]) -> StateDescription:
        """From the guest's JSON; raises TypeError/KeyError/ValueError for another shape."""

        def path_list(value: JSON) -> tuple[tuple[str, ...], ...]:
            if not isinstance(value, list) or not all(
                isinstance(p, list) and all(isinstance(k, str) for k in p) for p in value
            ):
                raise TypeError("state paths must be lists of state names")
            return tuple(tuple(p) for p in value)

        history = tuple((tuple(h.get("parent") or ()), path_list(h["paths"])) for h in raw.get("history") or ())
        return StateDescription(path_list(raw["paths"]), history, raw.get("context"))


@dataclass(frozen=True)
class Described:
    """The answer of a one-shot guest call about state paths (describe, migrate)."""

    outcome: Outcome
    description: StateDescription | None = None
    logs: tuple[LogLine, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


@dataclass(frozen=True)
class Structured:
    """The answer of ``PreparedMachine.structure``: the machine's shape as JSON (js_shims/host.d.ts)."""

    outcome: Outcome
    structure: JSON = None
    logs: tuple[LogLine, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


@dataclass(frozen=True)
class Invoked:
    """The outcome of calling one of the module's exported functions (PreparedMachine.invoke)."""

    outcome: Outcome
    value: JSON = None
    """What the function returned (or its promise resolved to), as JSON."""
    logs: tuple[LogLine, ...] = ()
    error: str | None = None
    """Not OK: why (a throw or rejection names the guest's error; a limit names the limit)."""
    missing: bool = False
    """The module exports no function at that path."""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK and not self.missing


@dataclass(frozen=True)
class StepRequest:
    """Start a settle window: create an instance, or deliver one event to a persisted one.

    ``restore`` loads a persisted instance and delivers nothing (no authorizer, no error events for
    services in flight): it checks that a snapshot loads, and persists it again. ``upgrade`` builds
    the instance from ``description`` (migrated state paths and context) in this machine, and
    records one transition whose event is ``event`` (``statebacked.upgrade``); nothing is delivered.
    ``recover`` loads a persisted instance and delivers only the error events of the services that
    were in flight at its last commit (their node died): no event, no authorizer.
    """

    kind: Literal["create", "event", "restore", "upgrade", "recover"]
    instance_name: str
    auth_context: Mapping[str, JSON] | None
    """Whose request this is; None for host-originated events (timers), which skip allowWrite."""
    context: Mapping[str, JSON] | None = None
    """create: the caller's initial context, shallow-merged over the machine's own."""
    persisted: Mapping[str, JSON] | None = None
    """event, restore: ``persisted`` of the last committed round."""
    event: Mapping[str, JSON] | None = None
    """event: the event object, with a string ``type``; upgrade: the upgrade transition's event."""
    description: StateDescription | None = None
    """upgrade: the migrated instance."""
    parent: Mapping[str, JSON] | None = None
    """The persistent instance that spawned this one ({machineName, machineInstanceName}): where
    ``sendParent`` goes."""


@dataclass(frozen=True)
class ReadRequest:
    """Ask the machine's allowRead whether ``auth_context`` may read an instance."""

    instance_name: str
    state: JSON
    context: Mapping[str, JSON]
    auth_context: Mapping[str, JSON]


@dataclass(frozen=True)
class Transition:
    """One macrostep of the machine, as the history and subscribers see it."""

    state: JSON
    context: JSON
    public_context: Mapping[str, JSON]
    tags: tuple[str, ...]
    done: bool
    event: Mapping[str, JSON] | None
    output: JSON = None
    """When ``done``: the machine's output (v4: the top-level final state's ``data``; v5: ``output``)."""


@dataclass(frozen=True)
class TimerOp:
    """A durable timer of the instance set or cancelled during a round, in order.

    ``set`` with ``id`` None is a delayed event the machine cannot cancel (XState gives it no id);
    the host keys its row itself. ``cancel_all``: the instance stopped. What each op does to the
    instance's timer rows is stated once, in ``runtime.timers.apply_timer_op``.
    A ``set`` with a ``target`` is a message to another instance, or the creation of a persistent
    child (wire-api 7.6): delivered reliably by the host, after ``delay_ms``.
    """

    op: Literal["set", "cancel", "cancel_all"]
    id: str | None = None
    delay_ms: int | None = None
    event: Mapping[str, JSON] | None = None
    target: Mapping[str, JSON] | None = None
    """{machineName, machineInstanceName, kind: "event" | "spawn", machineVersionId?, context?}."""


@dataclass(frozen=True)
class LogLine:
    stream: Literal["stdout", "stderr"]
    level: str
    text: str
    time_ms: int


@dataclass(frozen=True)
class FetchRequest:
    """An HTTP request the guest made; performed only after its round is committed."""

    id: int
    url: str
    method: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None


@dataclass(frozen=True)
class FetchResponse:
    status: int
    status_text: str
    url: str
    redirected: bool
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class EffectResult:
    """The outcome of one effect, fed back into the guest: a response or an error for the guest."""

    id: int
    response: FetchResponse | None = None
    error_name: str = "TypeError"
    error_message: str = ""

    @property
    def ok(self) -> bool:
        return self.response is not None


@dataclass(frozen=True)
class Usage:
    jobs: int = 0
    entries: int = 0
    host_calls: int = 0


@dataclass(frozen=True)
class Round:
    """What one guest entry produced. Commit it (if ``changed``) before performing ``effects``."""

    outcome: Outcome
    transitions: tuple[Transition, ...] = ()
    persisted: Mapping[str, JSON] | None = None
    timers: tuple[TimerOp, ...] = ()
    effects: tuple[FetchRequest, ...] = ()
    logs: tuple[LogLine, ...] = ()
    pending_effects: int = 0
    """Effects issued (in this or an earlier round) whose results the guest still awaits."""
    next_timer_ms: int | None = None
    """When the earliest ephemeral guest timer (setTimeout, child machines) is due."""
    error: str | None = None
    """For every outcome but OK: what happened, in words for the machine's author."""
    usage: Usage = field(default_factory=Usage)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def inflight(self) -> tuple[str, ...]:
        """Ids of services running at this round (opaque; at-most-once bookkeeping)."""
        if self.persisted is None:
            return ()
        return tuple(self.persisted.get("inflight", ()))


@dataclass(frozen=True)
class ReadDecision:
    allowed: bool
    logs: tuple[LogLine, ...] = ()
    outcome: Outcome = Outcome.OK
    error: str | None = None
