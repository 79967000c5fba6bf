"""The host loop of a sandbox, shared by every engine: entries, pumping, host requests, limits, logs.

An engine supplies only a :class:`VM` (one JS runtime + context with the prelude loaded: evaluate a
script, call the entry function with a JSON string, run pending jobs) through a :class:`VMProvider`.
Everything else, from the guest's protocol (js_shims/host.d.ts) to how a fault becomes an
:class:`~runtime.limits.Outcome`, lives here once, so the engines cannot drift apart.

- Guest faults are values: a :class:`VMError` out of a VM (a JS exception reaching the host, a trap,
  an interrupt) is mapped to the limit it means and returned on a Round; the sandbox is then discarded.
- Host faults (a caller breaking the contract) raise :class:`runtime.errors.HostError`.
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..bundle import MachineBundle
from ..engine import Engine, GuestSandbox, PreparedMachine, PreparedMigration, SandboxInstance, ScriptSandbox
from ..errors import HostError, InvalidMachineError
from ..hostcalls import PURE_KINDS, perform_pure
from ..limits import Limits, Outcome
from ..protocol import (
    Described,
    EffectResult,
    FetchRequest,
    Invoked,
    LogLine,
    ReadDecision,
    ReadRequest,
    Round,
    StateDescription,
    StepRequest,
    Structured,
    TimerOp,
    Transition,
    Usage,
)

__all__ = ["VM", "GuestDataError", "GuestLoopEngine", "VMError", "VMProvider"]

RuntimeApiSource = Callable[[int], str]

# Event types XState (and the host) produce; a client sending one could fire a timer early or fake a
# service's result. Host-originated deliveries (no authContext) may use them.
RESERVED_EVENT_PREFIXES = ("xstate.", "done.", "error.")


class _LimitHit(Exception):
    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


_LIMIT_WORDS = {
    Outcome.EXCEEDED_STACK: "the JS stack limit",
    Outcome.EXCEEDED_MEMORY: "the memory limit",
    Outcome.EXCEEDED_CPU: "the CPU time limit of one call",
    Outcome.EXCEEDED_JOBS: "the promise job limit of one call (a promise loop?)",
    Outcome.EXCEEDED_WALL_TIME: "the wall time limit of one call",
}


def _limit_hit(outcome: Outcome, limits: Limits, detail: str = "") -> _LimitHit:
    """The one wording of a limit error: what was exceeded, the setting's name and value."""
    field = outcome.limit
    assert field is not None
    message = f"{_LIMIT_WORDS[outcome]} was exceeded ({field} = {getattr(limits, field)})"
    return _LimitHit(outcome, f"{message}: {detail}" if detail else message)


class VMError(Exception):
    """An exception out of a VM: a JS exception that reached the host, an interrupt, or a trap.

    ``outcome`` is set when the VM knows which limit was hit (a stack overflow, a trap); otherwise
    the message's first line decides ("out of memory", "interrupted", else a guest error)."""

    def __init__(self, message: str, outcome: Outcome | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


def _limit_from_exception(exc: VMError, limits: Limits) -> _LimitHit:
    """Map an exception raised out of a VM to the limit (or fault) it means."""
    text = str(exc).split("\n", 1)[0]
    if exc.outcome is Outcome.GUEST_ERROR:
        return _LimitHit(Outcome.GUEST_ERROR, text)
    if exc.outcome is not None:
        return _limit_hit(exc.outcome, limits)
    if "out of memory" in text:
        return _limit_hit(Outcome.EXCEEDED_MEMORY, limits)
    if "interrupted" in text:
        return _limit_hit(Outcome.EXCEEDED_CPU, limits)
    return _LimitHit(Outcome.GUEST_ERROR, text)


def _outcome_of_fault(fault: Mapping[str, Any], limits: Limits) -> tuple[Outcome, str]:
    name, message = str(fault.get("name", "Error")), str(fault.get("message", ""))
    hit = None
    if fault.get("kind") == "stack":
        hit = _limit_hit(Outcome.EXCEEDED_STACK, limits, message)
    elif fault.get("kind") == "memory" or (name == "InternalError" and "out of memory" in message):
        hit = _limit_hit(Outcome.EXCEEDED_MEMORY, limits, "" if fault.get("kind") != "memory" else message)
    elif name == "InternalError" and "interrupted" in message:
        hit = _limit_hit(Outcome.EXCEEDED_CPU, limits)
    if hit is not None:
        return hit.outcome, str(hit)
    return Outcome.GUEST_ERROR, f"{name}: {message}"


class GuestDataError(Exception):
    """The guest handed back data of the wrong shape (possible with hostile machines)."""


class VM(abc.ABC):
    """One JS runtime + context with the prelude loaded and its entry function captured (deleted
    from globalThis before any user code ran). Used by one thread at a time. Every method raises
    :class:`VMError` for what the guest did; nothing else may escape for a guest's doing."""

    attached: bool = False
    """The machine was attached already (an image taken after ``entry("attach")``)."""
    footprint_is_cheap: bool = False
    """``footprint`` is an O(1) read (no heap walk): live actors use it as a growth trigger."""

    @abc.abstractmethod
    def eval(self, code: str) -> str | None:
        """Evaluate a global script; its value if that is a string, else None."""

    @abc.abstractmethod
    def call_entry(self, op: str, arg: str) -> str | None:
        """``entry(op, arg)``; the string it returned (None for undefined/null). Raises
        :class:`GuestDataError` for any other value."""

    @abc.abstractmethod
    def run_jobs(self, max_jobs: int, deadline: float) -> int:
        """Run pending promise jobs until none is left, ``max_jobs`` ran, or the monotonic
        ``deadline`` passed; the number run."""

    def start_entry(self, deadline: float) -> None:  # noqa: B027 (optional hook)
        """A guest entry begins; ``deadline`` (monotonic) is when its wall time runs out."""

    @abc.abstractmethod
    def footprint(self) -> int:
        """Bytes of memory the VM holds (at most; an engine that cannot tell exactly over-counts).
        Never runs guest code."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the VM. Idempotent; never runs guest code."""

    def heap_used(self) -> int:
        """Bytes the JS heap holds now, as its memory limit counts them (live actors' accounting,
        runtime/actors.py). Default: the footprint, an upper bound."""
        return self.footprint()

    def collect_garbage(self) -> None:  # noqa: B027 (optional hook)
        """Run the cycle collector if the engine can (after actors were dropped). Never runs guest code."""

    @property
    def alive(self) -> bool:
        """False once the VM trapped or was closed (it must not be entered again)."""
        return True


class VMProvider(abc.ABC):
    """Makes the VMs of one engine."""

    @abc.abstractmethod
    def open(self, scripts: Sequence[str], limits: Limits) -> VM:
        """A fresh VM with every limit applied, the prelude, then ``scripts``, evaluated."""

    def opener(
        self, scripts: Sequence[str], limits: Limits, attach: str, attached: VM | None = None
    ) -> Callable[[Limits], VM]:
        """How to open VMs of a prepared machine, one per window or call, with the limits of that
        moment. An engine may prepare once here (an image taken after attach) and return VMs with
        ``attached`` set. ``attached``, if given, is a VM of ``scripts`` that has just run ``attach``
        successfully (and nothing since): an engine may take its image from it instead of
        evaluating the bundle again."""
        return lambda current: self.open(scripts, current)


class _Session:
    """One VM as the host loop sees it: JSON calls, the budgets of an entry, pumping."""

    def __init__(self, vm: VM, limits: Limits) -> None:
        self.vm = vm
        self.limits = limits
        self.jobs = 0
        self.start_entry()

    def call(self, op: str, payload: Mapping[str, Any]) -> Any:
        """Call the guest entry. Anything but a JSON text back is the guest's doing (it can replace
        JSON.stringify, nest values beyond Python's recursion limit, return numbers Python refuses)."""
        reply = self.vm.call_entry(op, json.dumps(payload, separators=(",", ":")))
        if not reply:
            return None
        try:
            return json.loads(reply)
        except (ValueError, RecursionError) as exc:
            raise GuestDataError(f"the sandbox answered {op} with malformed JSON: {str(exc)[:200]}") from None

    def start_entry(self) -> None:
        """Start the budget of one guest entry: its wall time and promise jobs, however many pumps."""
        self.deadline = time.monotonic() + self.limits.entry_wall_ms / 1000
        self.entry_jobs = 0
        self.vm.start_entry(self.deadline)

    def check_wall(self) -> None:
        if time.monotonic() > self.deadline:
            raise _limit_hit(Outcome.EXCEEDED_WALL_TIME, self.limits)

    def pump(self) -> None:
        while True:
            budget = self.limits.max_jobs - self.entry_jobs
            ran = self.vm.run_jobs(budget, self.deadline)
            self.jobs += ran
            self.entry_jobs += ran
            if self.entry_jobs >= self.limits.max_jobs:
                raise _limit_hit(Outcome.EXCEEDED_JOBS, self.limits)
            self.check_wall()
            if ran < budget:  # the queue is empty (a VM stops early only at the deadline)
                return


Entropy = Callable[[int], bytes]
"""Where an entry's seed (Math.random, crypto) comes from: ``os.urandom`` unless a caller injects a
deterministic source (the differential tests of live actors against restore-per-event)."""


def _step_context(now_ms: int, seed: bool = True, entropy: Entropy = os.urandom) -> dict[str, Any]:
    ctx: dict[str, Any] = {"nowMs": now_ms}
    if seed:
        ctx["seed"] = base64.b64encode(entropy(32)).decode()
    return ctx


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


@dataclass
class _Accumulated:
    transitions: list[Transition] = field(default_factory=list)
    timers: list[TimerOp] = field(default_factory=list)
    effects: list[FetchRequest] = field(default_factory=list)
    logs: list[LogLine] = field(default_factory=list)
    persisted: Mapping[str, Any] | None = None
    pending: int = 0
    next_timer_ms: int | None = None


# Conversion errors of guest-produced data (wrong types, bad base64, numbers Python refuses, values
# nested beyond the recursion limit): each is a guest fault, reported as GUEST_ERROR.
_MALFORMED = (KeyError, ValueError, TypeError, AttributeError, OverflowError, RecursionError, binascii.Error)


def _transition(raw: Mapping[str, Any]) -> Transition:
    event = raw.get("event")
    tags = raw.get("tags") or []
    public = raw.get("publicContext")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise GuestDataError("state tags must be strings")
    return Transition(
        state=raw.get("state"),
        context=raw.get("context"),
        public_context=public if isinstance(public, dict) else {},
        tags=tuple(sorted(tags)),
        done=bool(raw.get("done")),
        event=event if isinstance(event, dict) else None,
        output=raw.get("output"),
    )


def _timer_op(raw: Mapping[str, Any]) -> TimerOp:
    op = raw.get("op")
    if op == "set":
        delay, event = raw.get("delayMs"), raw.get("event")
        if not isinstance(delay, int | float) or isinstance(delay, bool) or not 0 <= delay < 2**53:
            raise GuestDataError(f"a delayed event has an invalid delay {delay!r} (a finite number of ms)")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise GuestDataError("a delayed event must be an object with a string type")
        rid = raw.get("id")
        return TimerOp("set", None if rid is None else str(rid), int(delay), event, _target(raw.get("target")))
    if op == "cancel":
        return TimerOp("cancel", str(raw.get("id")))
    if op == "cancelAll":
        return TimerOp("cancel_all")
    raise GuestDataError(f"unknown timer op {op!r}")


_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def _target(raw: object) -> dict[str, Any] | None:
    """Where a message to another instance goes (wire-api 7.6), checked: names, kind, context."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise GuestDataError("a message target must be an object")
    target: dict[str, Any] = {}
    for name in ("machineName", "machineInstanceName"):
        value = raw.get(name)
        if not isinstance(value, str) or not _NAME.match(value):
            raise GuestDataError(f"a persistent instance needs a {name} of 1-128 letters, digits, _ or -: {value!r}")
        target[name] = value
    kind = raw.get("kind")
    if kind not in ("event", "spawn"):
        raise GuestDataError(f"unknown message kind {kind!r}")
    target["kind"] = kind
    version = raw.get("machineVersionId")
    if version is not None:
        if not isinstance(version, str):
            raise GuestDataError("machineVersionId must be a string")
        target["machineVersionId"] = version
    context = raw.get("context")
    if context is not None:
        if not isinstance(context, dict):
            raise GuestDataError("a persistent instance's initial context must be an object")
        target["context"] = context
    invoke_id = raw.get("invokeId")
    if invoke_id is not None:
        target["invokeId"] = str(invoke_id)
    return target


def _fetch_request(raw: Mapping[str, Any]) -> FetchRequest:
    url, method, headers, body = raw.get("url"), raw.get("method"), raw.get("headers"), raw.get("body")
    if not isinstance(url, str) or not isinstance(method, str) or not isinstance(headers, list):
        raise GuestDataError("malformed fetch request")
    pairs: list[tuple[str, str]] = []
    for pair in headers:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise GuestDataError("malformed fetch headers")
        pairs.append((pair[0], pair[1]))
    data = None if body is None else base64.b64decode(str(body))
    return FetchRequest(id=int(raw["id"]), url=url, method=method, headers=tuple(pairs), body=data)


class _Guest(GuestSandbox):
    """The host loop's side of one sandbox: entries, pumping, pure requests, limits."""

    def __init__(
        self,
        open_vm: Callable[[], VM],
        limits: Limits,
        attach: str | None = None,
        *,
        session: _Session | None = None,
        entropy: Entropy = os.urandom,
    ) -> None:
        self.limits = limits
        self.entropy = entropy
        self._slot: dict[str, Any] = {}
        """Merged into every entry's payload: ``{"actor": key}`` for a live actor sharing a VM."""
        self.vm_suspect = False
        """A fault that may have left the VM itself in doubt (a trap, an interrupt, malformed replies),
        as opposed to a JS exception of the machine: a VM shared by live actors is then discarded."""
        self._sandbox: _Session | None = None
        self._startup_fault: Round | None = None
        """Loading the machine failed in this sandbox (e.g. the process-wide CPU clock ran out while
        top-level code ran): every entry answers with this fault."""
        try:
            self._sandbox = session if session is not None else _Session(open_vm(), limits)
            if session is None and attach is not None and not self._sandbox.vm.attached:
                reply = self._sandbox.call("attach", {"runtimeApi": attach})
                if isinstance(reply, dict) and "fault" in reply:
                    outcome, message = _outcome_of_fault(reply["fault"], limits)
                    raise _LimitHit(outcome, message)
        except _LimitHit as hit:
            self._startup_fault = Round(hit.outcome, error=f"the machine failed to load: {hit}")
        except VMError as exc:
            mapped = _limit_from_exception(exc, limits)
            self._startup_fault = Round(mapped.outcome, error=f"the machine failed to load: {mapped}")
        except GuestDataError as exc:
            self._startup_fault = Round(Outcome.GUEST_ERROR, error=f"the machine failed to load: {exc}")
        if self._startup_fault is not None:
            self.close()
        self._reset_budgets()
        self._entries = 0
        self._host_calls = 0

    def _reset_budgets(self) -> None:
        """The per-event budgets: fetches (max_fetches), timer operations and log lines and bytes."""
        self._fetches = 0
        self._timer_sets = 0
        self._log_bytes = 0
        self._log_lines = 0
        self._log_dropped = 0

    def resume(self, results: Sequence[EffectResult], now_ms: int) -> Round:
        return self._enter("settle", {**self._context(now_ms), "results": [_result(r) for r in results]}, now_ms)

    def fire_timers(self, now_ms: int) -> Round:
        return self._enter("fire", self._context(now_ms), now_ms)

    def _context(self, now_ms: int, seed: bool = True) -> dict[str, Any]:
        return _step_context(now_ms, seed, self.entropy)

    def footprint(self) -> int:
        return 0 if self._sandbox is None else self._sandbox.vm.footprint()

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.vm.close()
        self._sandbox = None

    # -- entries------------------------------------------------------------------------------------------

    def _enter(self, op: str, payload: Mapping[str, Any], now_ms: int, script: str | None = None) -> Round:
        sandbox = self._sandbox
        if sandbox is None:
            raise HostError("this sandbox was discarded after a fault; start a new instance")
        self._entries += 1
        acc = _Accumulated()
        if self._slot:
            payload = {**payload, **self._slot}
        sandbox.start_entry()
        jobs_before = sandbox.jobs
        try:
            if script is not None:
                sandbox.call("settle", {**payload, "results": []})  # sets the clock and seed for the script
                sandbox.vm.eval(script)
            else:
                reply = sandbox.call(op, payload)
                if isinstance(reply, dict) and "fault" in reply:
                    outcome, message = _outcome_of_fault(reply["fault"], self.limits)
                    return self._fail(outcome, message, acc)
                if isinstance(reply, dict) and reply.get("denied"):
                    # Nothing ran; the live session is untouched. Keep the authorizer's log lines.
                    self._add_logs(acc, sandbox.call("collect", self._slot).get("logs") or [])
                    return Round(Outcome.DENIED, logs=tuple(acc.logs), error="allowWrite denied the event")
            while True:
                sandbox.pump()
                sandbox.check_wall()  # host answers (crypto, refused fetches) can loop forever too
                raw = sandbox.call("collect", self._slot)
                if not isinstance(raw, dict):
                    raise GuestDataError("the sandbox's collect reply is not an object")
                self._add_logs(acc, raw.get("logs") or [])
                if raw.get("denied"):
                    return Round(Outcome.DENIED, logs=tuple(acc.logs), error="allowWrite denied the request")
                if raw.get("fault"):
                    outcome, message = _outcome_of_fault(raw["fault"], self.limits)
                    return self._fail(outcome, message, acc)
                answers = self._absorb(raw, acc)
                if not answers:
                    break
                self._host_calls += len(answers)
                sandbox.call("settle", {**self._context(now_ms, seed=False), "results": answers, **self._slot})
            return self._finish(acc, sandbox.jobs - jobs_before)
        except _LimitHit as hit:
            return self._fail(hit.outcome, str(hit), acc)
        except GuestDataError as exc:
            self.vm_suspect = True
            return self._fail(Outcome.GUEST_ERROR, str(exc), acc)
        except VMError as exc:
            self.vm_suspect = True
            mapped = _limit_from_exception(exc, self.limits)
            return self._fail(mapped.outcome, str(mapped), acc)
        except _MALFORMED as exc:  # guest data that did not fit the contract (host.d.ts)
            self.vm_suspect = True
            return self._fail(Outcome.GUEST_ERROR, f"the sandbox's reply does not follow the contract: {exc!r}", acc)

    def _absorb(self, raw: Mapping[str, Any], acc: _Accumulated) -> list[dict[str, Any]]:
        """Take one collect into the accumulator; return answers to requests served at once."""
        acc.transitions.extend(_transition(t) for t in raw.get("transitions") or [])
        acc.timers.extend(_timer_op(t) for t in raw.get("timers") or [])
        if raw.get("persisted") is not None:
            acc.persisted = raw["persisted"]
        next_timer = raw.get("nextTimerMs")
        acc.next_timer_ms = int(next_timer) if isinstance(next_timer, int | float) else None
        answers: list[dict[str, Any]] = []
        for request in raw.get("requests") or []:
            kind = request.get("kind") if isinstance(request, dict) else None
            if kind in PURE_KINDS:
                answers.append(perform_pure(request))
            elif kind == "fetch":
                answer = self._admit_fetch(request, acc)
                if answer is not None:
                    answers.append(answer)
            else:
                rid = request.get("id") if isinstance(request, dict) else None
                answers.append(_error_answer(rid, f"unknown host request kind {kind!r}"))
        acc.pending = int(raw.get("pendingRequests") or 0) - len(answers)
        return answers

    def _admit_fetch(self, request: Mapping[str, Any], acc: _Accumulated) -> dict[str, Any] | None:
        """Queue a fetch as an effect, or answer it at once with the limit it breaks."""
        limits = self.limits
        rid = request.get("id")
        if self._fetches >= limits.max_fetches:
            self._engine_log(acc, f"fetch refused: more than {limits.max_fetches} fetches in one event (max_fetches)")
            return _error_answer(rid, f"statehost: fetch limit reached ({limits.max_fetches} per event, max_fetches)")
        body = request.get("body")
        if isinstance(body, str) and len(body) * 3 // 4 > limits.max_fetch_request_bytes:
            return _error_answer(
                rid,
                f"statehost: request body over {limits.max_fetch_request_bytes} bytes (max_fetch_request_bytes)",
            )
        self._fetches += 1
        acc.effects.append(_fetch_request(request))
        return None

    def _finish(self, acc: _Accumulated, jobs: int) -> Round:
        usage = Usage(jobs=jobs, entries=self._entries, host_calls=self._host_calls)
        limits = self.limits
        checks: list[tuple[Any, int, Outcome, str]] = []
        for t in acc.transitions:
            checks.append((t.context, limits.max_context_bytes, Outcome.EXCEEDED_CONTEXT_SIZE, "the context"))
            event_type = (t.event or {}).get("type")
            checks.append(
                (t.event, limits.max_snapshot_bytes, Outcome.EXCEEDED_SNAPSHOT_SIZE, f"the event {event_type!r}")
            )
        if acc.persisted is not None:
            checks.append(
                (acc.persisted, limits.max_snapshot_bytes, Outcome.EXCEEDED_SNAPSHOT_SIZE, "the persisted instance")
            )
        sets = [op for op in acc.timers if op.op == "set"]
        if self._timer_sets + len(sets) > limits.max_timer_ops:
            return self._fail(
                Outcome.EXCEEDED_TIMERS,
                f"more than {limits.max_timer_ops} timers, messages and spawns in one event (max_timer_ops)",
                acc,
            )
        self._timer_sets += len(sets)
        for op in sets:
            # Stored rows: bounded like the instance's own data. The receiver applies its incoming-event
            # limit (max_event_bytes) at delivery and refuses a larger message there, logged.
            checks.append((op.event, limits.max_snapshot_bytes, Outcome.EXCEEDED_SNAPSHOT_SIZE, "a delayed event"))
            if op.target is not None:
                target = op.target
                checks.append((target, limits.max_snapshot_bytes, Outcome.EXCEEDED_SNAPSHOT_SIZE, "a message target"))
        for value, limit, outcome, what in checks:
            size = _json_size(value)
            if size > limit:
                field = outcome.limit
                return self._fail(outcome, f"{what} would be {size} bytes as JSON; the limit is {limit} ({field})", acc)
        return Round(
            Outcome.OK,
            transitions=tuple(acc.transitions),
            persisted=acc.persisted,
            timers=tuple(acc.timers),
            effects=tuple(acc.effects),
            logs=tuple(acc.logs),
            pending_effects=max(acc.pending, 0),
            next_timer_ms=acc.next_timer_ms,
            usage=usage,
        )

    def _fail(self, outcome: Outcome, message: str, acc: _Accumulated) -> Round:
        """A fault: nothing of this entry is kept but its log lines; the sandbox is discarded."""
        self.close()
        self._engine_log(acc, f"{outcome.value}: {message}")
        return Round(outcome, logs=tuple(acc.logs), error=message)

    def _engine_log(self, acc: _Accumulated, text: str) -> None:
        acc.logs.append(LogLine("stderr", "engine", f"[statehost] {text}", int(time.time() * 1000)))

    def _add_logs(self, acc: _Accumulated, raw_logs: Sequence[Mapping[str, Any]]) -> None:
        limits = self.limits
        for raw in raw_logs:
            text = str(raw.get("text", ""))
            if self._log_lines >= limits.max_log_lines or self._log_bytes + len(text) > limits.max_log_bytes:
                if self._log_dropped == 0:
                    self._engine_log(
                        acc,
                        f"log limit reached ({limits.max_log_lines} lines / {limits.max_log_bytes} bytes per event); "
                        "further lines of this event are dropped",
                    )
                self._log_dropped += 1
                continue
            self._log_lines += 1
            self._log_bytes += len(text)
            acc.logs.append(_log_line(raw))


class _Instance(_Guest, SandboxInstance):
    def __init__(self, prepared: _Prepared, session: _Session | None = None) -> None:
        super().__init__(
            prepared.open_vm,
            prepared.limits,
            attach=prepared.runtime_api_mode,
            session=session,
            entropy=prepared.entropy,
        )
        self._instance_name = ""

    def begin(self, request: StepRequest, now_ms: int) -> Round:
        if self._startup_fault is not None:
            return self._startup_fault
        invalid = self._check_request(request)
        if invalid is not None:
            return invalid
        self._instance_name = request.instance_name
        payload: dict[str, Any] = {
            **self._context(now_ms),
            "kind": request.kind,
            "instanceName": request.instance_name,
            "authContext": None if request.auth_context is None else dict(request.auth_context),
            "parent": None if request.parent is None else dict(request.parent),
        }
        if request.kind == "create":
            payload["context"] = dict(request.context or {})
        elif request.kind == "upgrade":
            assert request.description is not None and request.event is not None
            payload["description"] = request.description.to_json()
            payload["event"] = dict(request.event)
        else:
            payload["snapshot"] = request.persisted
            if request.event is not None:
                payload["event"] = request.event
        return self._enter("begin", payload, now_ms)

    def new_window(self) -> None:
        self._reset_budgets()

    def deliver(self, event: Mapping[str, Any], auth_context: Mapping[str, Any] | None, now_ms: int) -> Round:
        if self._startup_fault is not None:
            return self._startup_fault
        invalid = self._check_event(event, auth_context is not None)
        if invalid is not None:
            return invalid
        payload = {
            **self._context(now_ms),
            "instanceName": self._instance_name,
            "authContext": None if auth_context is None else dict(auth_context),
            "event": dict(event),
        }
        return self._enter("send", payload, now_ms)

    def _check_event(self, event: object, from_client: bool) -> Round | None:
        if not isinstance(event, Mapping) or not isinstance(event.get("type"), str) or not event["type"]:
            return Round(Outcome.INVALID_EVENT, error="an event must be an object with a non-empty string type")
        if from_client and event["type"].startswith(RESERVED_EVENT_PREFIXES):
            return Round(
                Outcome.INVALID_EVENT,
                error=f"event type {event['type']!r} is reserved for XState (xstate.*, done.*, error.*)",
            )
        return self._check_size("event", event)

    def _check_size(self, what: str, value: object) -> Round | None:
        try:
            size = _json_size(value)
        except (TypeError, ValueError) as exc:
            return Round(Outcome.INVALID_EVENT, error=f"the {what} is not JSON: {exc}")
        if size > self.limits.max_event_bytes:
            return Round(
                Outcome.EXCEEDED_EVENT_SIZE,
                error=f"the {what} is {size} bytes as JSON; the limit is {self.limits.max_event_bytes} "
                "(max_event_bytes)",
            )
        return None

    def _check_request(self, request: StepRequest) -> Round | None:
        if request.kind == "upgrade":
            if request.description is None or request.event is None:
                raise HostError("an upgrade step needs the migrated description and its event")
            return self._check_size("upgraded context", request.description.context)
        if request.kind != "create" and request.persisted is None:
            raise HostError(f"a {request.kind} step needs the persisted instance")
        if request.kind in ("restore", "recover"):
            return None
        if request.kind == "event":
            return self._check_event(request.event, request.auth_context is not None)
        context: object = request.context  # from callers that may not have checked it
        if context is not None and not isinstance(context, Mapping):
            return Round(Outcome.INVALID_EVENT, error="the initial context must be a JSON object")
        return self._check_size("initial context", context or {})


def _log_line(raw: Mapping[str, Any]) -> LogLine:
    time_ms = raw.get("timeMs")
    return LogLine(
        "stderr" if raw.get("stream") == "stderr" else "stdout",
        str(raw.get("level", "log")),
        str(raw.get("text", "")),
        int(time_ms) if isinstance(time_ms, int | float) else 0,
    )


def _error_answer(rid: Any, message: str) -> dict[str, Any]:
    return {"id": rid, "ok": False, "error": {"name": "TypeError", "message": message}}


def _result(result: EffectResult) -> dict[str, Any]:
    if result.response is None:
        return {
            "id": result.id,
            "ok": False,
            "error": {"name": result.error_name, "message": result.error_message},
        }
    r = result.response
    return {
        "id": result.id,
        "ok": True,
        "value": {
            "status": r.status,
            "statusText": r.status_text,
            "url": r.url,
            "redirected": r.redirected,
            "headers": [list(h) for h in r.headers],
            "body": base64.b64encode(r.body).decode(),
        },
    }


class _Script(_Guest, ScriptSandbox):
    def run(self, code: str, now_ms: int) -> Round:
        if self._startup_fault is not None:
            return self._startup_fault
        return self._enter("script", _step_context(now_ms), now_ms, script=code)

    def evaluate_json(self, expression: str) -> Any:
        if self._sandbox is None:
            raise HostError("this sandbox was discarded after a fault")
        text = self._sandbox.vm.eval(f"JSON.stringify({expression})")
        return None if text is None else json.loads(text)


class _Prepared(PreparedMachine):
    def __init__(
        self,
        bundle: MachineBundle,
        major: int,
        exports: tuple[str, ...],
        limits: Limits,
        runtime_api: str | None,
        provider: VMProvider,
        attached: VM | None = None,
    ) -> None:
        self.bundle = bundle
        self.major = major
        self.exports = exports
        self.limits = limits
        scripts: tuple[str, ...] = (bundle.code,) if runtime_api is None else (bundle.code, runtime_api)
        self.runtime_api_mode = "bundle" if runtime_api is None else "global"
        self._opener = provider.opener(scripts, limits, self.runtime_api_mode, attached)
        self.entropy: Entropy = os.urandom
        """Seeds of this machine's sandboxes (tests inject a deterministic source)."""

    def open_vm(self, limits: Limits | None = None) -> VM:
        return self._opener(limits or self.limits)

    def new_instance(self) -> SandboxInstance:
        return _Instance(self)

    def authorize_read(self, request: ReadRequest) -> ReadDecision:
        return _authorize(self, request)

    def describe(self, persisted: Mapping[str, Any], now_ms: int) -> Described:
        guest = _OneShotGuest(self.open_vm, self.limits, attach=self.runtime_api_mode)
        return guest.described("describe", {"snapshot": dict(persisted)}, now_ms)

    def invoke(self, path: Sequence[str], arg: Any, now_ms: int) -> Invoked:
        return _InvokeGuest(self).invoke(path, arg, now_ms)

    def structure(self, now_ms: int) -> Structured:
        guest = _OneShotGuest(self.open_vm, self.limits, attach=self.runtime_api_mode)
        reply, round_ = guest.once("structure", {}, now_ms)
        if reply is None:
            return Structured(round_.outcome, logs=round_.logs, error=round_.error)
        shape = reply.get("structure")
        if not isinstance(shape, dict) or not isinstance(shape.get("root"), dict):
            return Structured(Outcome.GUEST_ERROR, logs=round_.logs, error="malformed structure reply")
        return Structured(Outcome.OK, shape, round_.logs)


class _InvokeGuest(_Guest):
    """One exported function called in a fresh sandbox, pumped (with host calls) until quiescent."""

    def __init__(self, prepared: _Prepared) -> None:
        super().__init__(prepared.open_vm, prepared.limits, attach=prepared.runtime_api_mode)

    def invoke(self, path: Sequence[str], arg: Any, now_ms: int) -> Invoked:
        try:
            if self._startup_fault is not None:
                return Invoked(self._startup_fault.outcome, error=self._startup_fault.error)
            round_ = self._enter("invoke", {**_step_context(now_ms), "path": list(path), "arg": arg}, now_ms)
            if not round_.ok:
                return Invoked(round_.outcome, logs=round_.logs, error=round_.error)
            if round_.effects or round_.pending_effects:
                return Invoked(Outcome.GUEST_ERROR, logs=round_.logs, error="fetch is not available here")
            assert self._sandbox is not None
            reply = self._sandbox.call("invoke_result", {})
            if not isinstance(reply, dict):
                return Invoked(Outcome.GUEST_ERROR, logs=round_.logs, error="malformed invoke result")
            if reply.get("missing"):
                return Invoked(Outcome.OK, logs=round_.logs, missing=True)
            if reply.get("pending"):
                return Invoked(Outcome.GUEST_ERROR, logs=round_.logs, error="the returned promise never settled")
            if "error" in reply:
                outcome, message = _outcome_of_fault(reply["error"], self.limits)
                return Invoked(outcome, logs=round_.logs, error=message)
            return Invoked(Outcome.OK, reply.get("value"), round_.logs)
        except (GuestDataError, *_MALFORMED) as exc:
            return Invoked(Outcome.GUEST_ERROR, error=str(exc))
        except VMError as exc:
            mapped = _limit_from_exception(exc, self.limits)
            return Invoked(mapped.outcome, error=str(mapped))
        finally:
            self.close()


class _OneShotGuest(_Guest):
    """A fresh sandbox for one synchronous guest call (allowRead, describe, a migration), with the
    same limits and log caps as an event. Closed after the call."""

    def once(self, op: str, payload: Mapping[str, Any], now_ms: int) -> tuple[dict[str, Any] | None, Round]:
        """The guest's reply (None on a fault) and a Round carrying the outcome, error and logs."""
        if self._startup_fault is not None or self._sandbox is None:
            return None, self._startup_fault or Round(Outcome.GUEST_ERROR, error="the sandbox did not start")
        sandbox = self._sandbox
        acc = _Accumulated()
        sandbox.start_entry()
        try:
            reply = sandbox.call(op, {**_step_context(now_ms), **payload})
            sandbox.pump()
            if not isinstance(reply, dict):
                raise GuestDataError(f"the {op} reply is not an object")
            self._add_logs(acc, reply.get("logs") or [])
            if "fault" in reply:
                collected = sandbox.call("collect", {})  # the log lines written before the fault
                self._add_logs(acc, (collected or {}).get("logs") or [] if isinstance(collected, dict) else [])
                outcome, message = _outcome_of_fault(reply["fault"], self.limits)
                return None, Round(outcome, logs=tuple(acc.logs), error=message)
            return reply, Round(Outcome.OK, logs=tuple(acc.logs))
        except _LimitHit as hit:
            outcome, message = hit.outcome, str(hit)
        except VMError as exc:
            mapped = _limit_from_exception(exc, self.limits)
            outcome, message = mapped.outcome, str(mapped)
        except (GuestDataError, *_MALFORMED) as exc:
            outcome, message = Outcome.GUEST_ERROR, str(exc)
        finally:
            self.close()
        return None, Round(outcome, logs=tuple(acc.logs), error=message)

    def described(self, op: str, payload: Mapping[str, Any], now_ms: int) -> Described:
        reply, round_ = self.once(op, payload, now_ms)
        if reply is None:
            return Described(round_.outcome, logs=round_.logs, error=round_.error)
        try:
            description = StateDescription.from_json(reply["description"])
        except (*_MALFORMED, TypeError) as exc:
            return Described(Outcome.GUEST_ERROR, logs=round_.logs, error=f"malformed state paths: {exc!r}")
        return Described(Outcome.OK, description, round_.logs)


def _authorize(prepared: _Prepared, request: ReadRequest) -> ReadDecision:
    guest = _OneShotGuest(prepared.open_vm, prepared.limits, attach=prepared.runtime_api_mode)
    reply, round_ = guest.once(
        "authorize_read",
        {
            "instanceName": request.instance_name,
            "state": request.state,
            "context": dict(request.context),
            "authContext": dict(request.auth_context),
        },
        int(time.time() * 1000),
    )
    if reply is not None:
        return ReadDecision(reply.get("allowed") is True, logs=round_.logs)
    acc = _Accumulated()
    acc.logs.extend(round_.logs)
    guest._engine_log(acc, f"allowRead failed, treated as a denial: {round_.error}")
    return ReadDecision(False, logs=tuple(acc.logs), outcome=round_.outcome, error=round_.error)


class _Migration(PreparedMigration):
    def __init__(self, bundle: MachineBundle, limits: Limits, provider: VMProvider) -> None:
        self.bundle = bundle
        self.limits = limits
        self.provider = provider

    def upgrade(self, description: StateDescription, now_ms: int) -> Described:
        guest = _OneShotGuest(lambda: self.provider.open((self.bundle.code,), self.limits), self.limits)
        return guest.described("migrate", {"description": description.to_json()}, now_ms)


class GuestLoopEngine(Engine):
    """An engine made of a :class:`VMProvider` and the shared host loop."""

    def __init__(self, provider: VMProvider, runtime_api: RuntimeApiSource | None = None) -> None:
        self._provider = provider
        self._runtime_api = runtime_api

    def script_sandbox(self, limits: Limits | None = None) -> ScriptSandbox:
        limits = limits or Limits()
        return _Script(lambda: self._provider.open((), limits), limits)

    def prepare_migration(self, bundle: MachineBundle, limits: Limits | None = None) -> PreparedMigration:
        limits = limits or Limits()
        guest = _OneShotGuest(lambda: self._provider.open((bundle.code,), limits), limits)
        reply, round_ = guest.once("migrate", {"check": True}, int(time.time() * 1000))
        if reply is None:
            raise InvalidMachineError(round_.error or "the migration failed to load")
        return _Migration(bundle, limits, self._provider)

    def prepare(self, bundle: MachineBundle, limits: Limits | None = None) -> PreparedMachine:
        limits = limits or Limits()
        runtime_api = None
        vm = None
        try:
            try:
                vm = self._provider.open((bundle.code,), limits)
                sandbox = _Session(vm, limits)
                if bundle.self_contained:
                    probe = sandbox.call("attach", {"runtimeApi": "none"})
                    _raise_if_fault(probe)
                    if self._runtime_api is None:
                        raise HostError("a self-contained bundle needs a runtime API source (a Bundler)")
                    runtime_api = self._runtime_api(int(probe["major"]))
                    vm.close()
                    vm = self._provider.open((bundle.code, runtime_api), limits)
                    sandbox = _Session(vm, limits)
                    reply = sandbox.call("attach", {"runtimeApi": "global"})
                else:
                    reply = sandbox.call("attach", {"runtimeApi": "bundle"})
            except VMError as exc:
                hit = _limit_from_exception(exc, limits)
                detail = str(exc).strip() if hit.outcome is Outcome.GUEST_ERROR else str(hit)
                raise InvalidMachineError(f"the module failed while loading: {detail}") from None
            _raise_if_fault(reply)
            major = int(reply["major"])
            if bundle.xstate_major is not None and major != bundle.xstate_major:
                raise InvalidMachineError(
                    f"the machine was made with XState {major}, but the upload was bundled for XState "
                    f"{bundle.xstate_major}; declare XState {major} (or import npm:xstate@{major})"
                )
            exports = tuple(reply.get("exports", ()))
            # The VM that validated the machine has just attached it: an engine that keeps an image
            # takes it from this VM rather than evaluating the bundle a second time.
            return _Prepared(bundle, major, exports, limits, runtime_api, self._provider, attached=vm)
        finally:
            if vm is not None:
                vm.close()


def _raise_if_fault(reply: Any) -> None:
    if not isinstance(reply, dict):
        raise HostError("the guest's attach reply is not an object")
    if "fault" in reply:
        fault = reply["fault"]
        raise InvalidMachineError(str(fault.get("message", "the module is not a machine")))
