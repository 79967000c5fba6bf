"""The settle window: one event (or creation) from delivery until the instance settles.

Persist, then publish: each round the guest produces is handed to the caller's ``commit`` and only
after it returns are the round's effects (fetches) performed; their results start the next round.
The window ends when nothing is pending, or when ``settle_window_ms`` has passed; services still
running then are *cut off*: the last committed round lists them as in flight, and the next event
first delivers their error events (at-most-once, never re-run).

The caller owns durability (``commit``), the network (``transport``) and time (``clock``); this
module owns the order in which they happen.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .clock import Clock
from .engine import GuestSandbox, PreparedMachine, SandboxInstance
from .executor import Executor
from .limits import Limits, Outcome
from .protocol import EffectResult, FetchRequest, LogLine, Round, StepRequest
from .transport import FetchError, Transport

__all__ = ["CommitFn", "WindowResult", "drive", "run_window"]

CommitFn = Callable[[Round], Awaitable[None]]


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

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


def _changed(round_: Round, last_persisted: object) -> bool:
    return bool(round_.transitions or round_.timers or round_.logs) or round_.persisted != last_persisted


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
    executor: Executor,
    commit: CommitFn,
    transport: Transport,
    clock: Clock,
) -> WindowResult:
    """Run one settle window in a fresh sandbox. Raises only for host faults (and commit's errors)."""
    instance: SandboxInstance = await executor.run(prepared.new_instance)
    try:
        first = await executor.run(instance.begin, request, clock.now_ms())
        return await drive(
            instance,
            first,
            executor=executor,
            commit=commit,
            transport=transport,
            clock=clock,
            limits=prepared.limits,
            last_persisted=request.persisted,
        )
    finally:
        instance.close()


async def drive(
    instance: GuestSandbox,
    first: Round,
    *,
    executor: Executor,
    commit: CommitFn,
    transport: Transport,
    clock: Clock,
    limits: Limits,
    last_persisted: object = None,
) -> WindowResult:
    """Commit rounds and perform their effects until the sandbox settles or the window ends."""
    if not first.ok:
        return WindowResult(first.outcome, first.error, (), uncommitted_logs=first.logs)
    tasks: dict[asyncio.Task[EffectResult], int] = {}
    current = first
    try:
        deadline = clock.now_ms() + limits.settle_window_ms
        committed: list[Round] = []
        rounds = 0
        while True:
            if _changed(current, last_persisted):
                await commit(current)
                committed.append(current)
                last_persisted = current.persisted
            for effect in current.effects:
                tasks[asyncio.ensure_future(_perform(transport, effect, limits))] = effect.id
            if not tasks and current.next_timer_ms is None:
                return WindowResult(Outcome.OK, None, tuple(committed))
            rounds += 1
            now = clock.now_ms()
            if now >= deadline or rounds >= limits.max_rounds:
                return WindowResult(Outcome.OK, None, tuple(committed), cut_off=True)
            wake_at = deadline if current.next_timer_ms is None else min(deadline, current.next_timer_ms)
            sleeper = asyncio.ensure_future(clock.sleep_until(wake_at))
            try:
                await asyncio.wait([*tasks, sleeper], return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
            done = [task for task in tasks if task.done()]
            now = clock.now_ms()
            if done:
                results = [task.result() for task in done]
                for task in done:
                    del tasks[task]
                current = await executor.run(instance.resume, results, now)
            elif current.next_timer_ms is not None and now >= current.next_timer_ms:
                current = await executor.run(instance.fire_timers, now)
            else:
                return WindowResult(Outcome.OK, None, tuple(committed), cut_off=True)
            if not current.ok:
                return WindowResult(
                    Outcome.OK, None, tuple(committed), late_fault=current, uncommitted_logs=current.logs
                )
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
