"""The settle window: one event (or creation) from delivery until the instance settles.

Persist, then publish: each round the guest produces is handed to the caller's ``commit`` and only
after it returns are the round's effects (fetches) performed; their results start the next round.
The window ends when nothing is pending, or when ``settle_window_ms`` has passed; services still
running then are *cut off*: the last committed round lists them as in flight, and the next event
first delivers their error events (at-most-once, never re-run).

Events that arrive while a window is open join it (an :class:`Inbox`): each is authorized and
sent into the running instance, and extends the window to ``settle_window_ms`` after it, as State
Backed does. The caller owns durability (``commit``), the network (``transport``) and time
(``clock``); this module owns the order in which they happen.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .clock import Clock
from .engine import GuestSandbox, PreparedMachine, SandboxInstance
from .executor import Runner
from .limits import Limits, Outcome
from .protocol import EffectResult, FetchRequest, LogLine, Round, StepRequest
from .transport import FetchError, Transport

__all__ = ["CommitFn", "Delivery", "Inbox", "WindowResult", "drive", "run_window"]

CommitFn = Callable[[Round, object], Awaitable[None]]
"""Commit one round durably. The second argument is the tag of the request or delivery whose
processing produced the round (None for rounds produced by effects and timers inside the window)."""


@dataclass(eq=False)
class Delivery:
    """An event for an instance whose window may be open."""

    event: Mapping[str, Any]
    auth_context: Mapping[str, Any] | None
    tag: object = None
    """Opaque to the runtime; handed back with the round's commit (e.g. the timer row to delete)."""
    precheck: Callable[[], Awaitable[bool]] | None = None
    """Asked right before the event runs; False withdraws it (outcome CANCELED), e.g. a timer that a
    committed round of this window has cancelled meanwhile."""
    accepted: asyncio.Future[Round] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    """Resolved with this delivery's own round: ok, or why it was refused."""


class Inbox:
    """Deliveries waiting for an instance, in arrival order. Waiting on it loses nothing."""

    def __init__(self) -> None:
        self._items: collections.deque[Delivery] = collections.deque()
        self._signal = asyncio.Event()

    def put(self, delivery: Delivery) -> None:
        self._items.append(delivery)
        self._signal.set()

    def pop(self) -> Delivery | None:
        if not self._items:
            self._signal.clear()
            return None
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)

    def pending(self) -> tuple[Delivery, ...]:
        """The deliveries not taken yet, in order."""
        return tuple(self._items)

    async def wait(self) -> None:
        await self._signal.wait()


@dataclass(frozen=True)
class WindowResult:
    """How a settle window ended."""

    outcome: Outcome
    """The outcome of the request itself (its first round). Not OK means nothing was committed."""
    error: str | None
    committed: tuple[Round, ...]
    """Rounds handed to ``commit``, in order."""
    cut_off: bool = False
    """The window ended with work pending (services still running, timers not yet due)."""
    late_fault: Round | None = None
    """A later round failed; the instance stays at the last committed round."""
    uncommitted_logs: tuple[LogLine, ...] = ()
    """Log lines of failed rounds: the caller stores them although nothing else is committed."""
    quiescent: bool = False
    """The window ended with nothing pending and no service running: the sandbox holds exactly the
    last committed state and nothing else, so it may serve the same instance's next event."""
    sandbox: SandboxInstance | None = None
    """With ``keep_sandbox``: the live sandbox of a quiescent window, now owned by the caller."""
    detached: tuple[asyncio.Task[EffectResult], ...] = ()
    """Committed effects still running when the instance settled (a fire-and-forget fetch from an
    action, or one whose service was stopped): nobody reads their results, but a committed effect
    must happen, so they are handed to the caller to let finish (or cancel at shutdown)."""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


def _changed(round_: Round, last_persisted: object) -> bool:
    return bool(round_.transitions or round_.timers or round_.logs) or round_.persisted != last_persisted


# Outcomes of a delivery that leave the live session untouched: the window goes on.
_REFUSALS = frozenset({Outcome.DENIED, Outcome.INVALID_EVENT, Outcome.EXCEEDED_EVENT_SIZE, Outcome.CANCELED})


async def _perform(transport: Transport, request: FetchRequest, limits: Limits) -> EffectResult:
    try:
        response = await transport.fetch(request, limits)
    except FetchError as exc:
        return EffectResult(request.id, error_name=exc.name, error_message=str(exc))
    return EffectResult(request.id, response=response)


async def run_window(
    prepared: PreparedMachine,
    request: StepRequest,
    *,
    executor: Runner,
    commit: CommitFn,
    transport: Transport,
    clock: Clock,
    tag: object = None,
    inbox: Inbox | None = None,
    sandbox: SandboxInstance | None = None,
    keep_sandbox: bool = False,
) -> WindowResult:
    """Run one settle window. Raises only for host faults (and commit's errors).

    ``tag`` is handed to ``commit`` with the request's own round; deliveries put into ``inbox``
    while the window is open join it. ``sandbox`` is a live sandbox a quiescent window of the same
    instance left behind (its state is the request's persisted state); without one, a fresh
    sandbox restores the persisted instance. With ``keep_sandbox`` a quiescent window hands its
    sandbox back in the result instead of discarding it.
    """
    instance: SandboxInstance
    if sandbox is not None:
        if request.kind != "event" or request.event is None:
            raise ValueError("a live sandbox only takes events")
        instance = sandbox
        instance.new_window()  # per-event budgets start afresh, as in a fresh sandbox
        first = await executor.run(instance.deliver, request.event, request.auth_context, clock.now_ms())
    else:
        instance = await executor.run(prepared.new_instance)
        first = await executor.run(instance.begin, request, clock.now_ms())
    kept = False
    try:
        result = await drive(
            instance,
            first,
            executor=executor,
            commit=commit,
            transport=transport,
            clock=clock,
            limits=prepared.limits,
            last_persisted=request.persisted,
            tag=tag,
            inbox=inbox,
        )
        if keep_sandbox and result.quiescent and result.ok:
            kept = True
            return dataclasses.replace(result, sandbox=instance)
        return result
    finally:
        if not kept:
            instance.close()


async def drive(
    instance: GuestSandbox,
    first: Round,
    *,
    executor: Runner,
    commit: CommitFn,
    transport: Transport,
    clock: Clock,
    limits: Limits,
    last_persisted: object = None,
    tag: object = None,
    inbox: Inbox | None = None,
    until_children: bool = True,
) -> WindowResult:
    """Commit rounds and perform their effects until the sandbox settles or the window ends.

    With ``until_children`` (machines) the window ends once no service is in flight; without it
    (scripts) it ends when nothing at all is pending.
    """
    if not first.ok:
        return WindowResult(first.outcome, first.error, (), uncommitted_logs=first.logs)
    tasks: dict[asyncio.Task[EffectResult], int] = {}
    waiter: asyncio.Task[None] | None = None
    current, current_tag = first, tag
    try:
        deadline = clock.now_ms() + limits.settle_window_ms
        committed: list[Round] = []
        rounds = 0
        while True:
            if current_tag is not None or _changed(current, last_persisted):
                await commit(current, current_tag)
                committed.append(current)
                last_persisted = current.persisted
            for effect in current.effects:
                tasks[asyncio.ensure_future(_perform(transport, effect, limits))] = effect.id
            delivery = inbox.pop() if inbox is not None else None
            quiescent = not tasks and current.next_timer_ms is None
            # Settled (State Backed): no service of the instance is running any more. Fetches and
            # timers nobody waits for are abandoned with the sandbox. Services that can never
            # progress (nothing pending) are cut off now rather than after the whole window.
            settled = quiescent or (until_children and not current.inflight)
            if delivery is None and settled:
                detached = tuple(tasks)
                tasks.clear()
                return WindowResult(
                    Outcome.OK,
                    None,
                    tuple(committed),
                    quiescent=quiescent and not current.inflight,
                    detached=detached,
                )
            rounds += 1
            now = clock.now_ms()
            if delivery is None and (now >= deadline or rounds >= limits.max_rounds):
                return WindowResult(Outcome.OK, None, tuple(committed), cut_off=True)
            if delivery is None:
                wake_at = deadline if current.next_timer_ms is None else min(deadline, current.next_timer_ms)
                sleeper = asyncio.ensure_future(clock.sleep_until(wake_at))
                if inbox is not None and waiter is None:
                    waiter = asyncio.ensure_future(inbox.wait())
                waits: list[asyncio.Future[Any]] = [*tasks, sleeper, *([waiter] if waiter else [])]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                if waiter is not None and waiter.done():
                    waiter = None
                    delivery = inbox.pop() if inbox is not None else None
            now = clock.now_ms()
            done = [task for task in tasks if task.done()]
            if delivery is not None:
                if not isinstance(instance, SandboxInstance):
                    raise TypeError("only machine sandboxes take deliveries")
                previous = current
                if delivery.precheck is not None and not await delivery.precheck():
                    current = Round(Outcome.CANCELED, error="the delivery was withdrawn before it ran")
                else:
                    current = await executor.run(instance.deliver, delivery.event, delivery.auth_context, now)
                delivery.accepted.set_result(current)
                if current.outcome in _REFUSALS:
                    # Nothing ran: the session is as it was (same pending work, nothing to commit).
                    current = Round(
                        Outcome.OK,
                        persisted=last_persisted if isinstance(last_persisted, Mapping) else None,
                        pending_effects=previous.pending_effects,
                        next_timer_ms=previous.next_timer_ms,
                    )
                    current_tag = None
                    continue
                current_tag = delivery.tag
                deadline = now + limits.settle_window_ms
            elif done:
                results = [task.result() for task in done]
                for task in done:
                    del tasks[task]
                current, current_tag = await executor.run(instance.resume, results, now), None
            elif current.next_timer_ms is not None and now >= current.next_timer_ms:
                current, current_tag = await executor.run(instance.fire_timers, now), None
            else:
                return WindowResult(Outcome.OK, None, tuple(committed), cut_off=True)
            if not current.ok:
                return WindowResult(
                    Outcome.OK, None, tuple(committed), late_fault=current, uncommitted_logs=current.logs
                )
    finally:
        if waiter is not None:
            waiter.cancel()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
