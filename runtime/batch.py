"""Settle windows of several instances of one machine version, begun in one executor call.

Due timers come in bursts (10,000 instances armed with one delay fall due at one instant). Run one
window at a time and each costs two executor hops (a fresh sandbox, then its first step) and a task
of its own; here a group of instances of one prepared version is begun in ONE call on the
executor (each in its own fresh sandbox, or the live sandbox its last quiescent window left
behind), and every window then continues exactly as :func:`runtime.run_window` would continue it
(``drive``: commit, effects, deliveries that join, timers), concurrently, so that their commits
reach the store together (one transaction when the store groups commits).

Isolation is that of ``run_window``: one sandbox per instance, nothing shared between them; the
call only saves hops. A window whose begin raised (a host fault) fails alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from .clock import Clock
from .engine import PreparedMachine, SandboxInstance
from .executor import Runner
from .protocol import Round, StepRequest
from .settle import CommitFn, Inbox, WindowResult, drive
from .transport import Transport

__all__ = ["BatchWindow", "run_windows"]


@dataclass(eq=False)
class BatchWindow:
    """One instance's window in a batch: what ``run_window`` takes for it."""

    request: StepRequest
    commit: CommitFn
    tag: object = None
    inbox: Inbox | None = None
    sandbox: SandboxInstance | None = None
    """The live sandbox of the instance's last quiescent window (its state is ``request.persisted``)."""


def _begin_all(
    prepared: PreparedMachine, windows: Sequence[BatchWindow], clock: Clock
) -> list[tuple[SandboxInstance | None, Round | Exception]]:
    """On an executor thread: the first round of every window (the same steps as ``run_window``)."""
    out: list[tuple[SandboxInstance | None, Round | Exception]] = []
    for window in windows:
        instance: SandboxInstance | None = window.sandbox
        try:
            if instance is not None:
                if window.request.kind != "event" or window.request.event is None:
                    raise ValueError("a live sandbox only takes events")
                instance.new_window()
                first = instance.deliver(window.request.event, window.request.auth_context, clock.now_ms())
            else:
                instance = prepared.new_instance()
                first = instance.begin(window.request, clock.now_ms())
        except Exception as exc:
            out.append((instance, exc))
        else:
            out.append((instance, first))
    return out


async def run_windows(
    prepared: PreparedMachine,
    windows: Sequence[BatchWindow],
    *,
    executor: Runner,
    transport: Transport,
    clock: Clock,
    keep_sandbox: bool = False,
) -> list[WindowResult | Exception]:
    """Run one settle window per entry of ``windows`` (instances of ``prepared``), begun in one
    executor call; per window, its result or the exception ``run_window`` would have raised."""
    begun = await executor.run(_begin_all, prepared, windows, clock)

    async def finish(window: BatchWindow, instance: SandboxInstance | None, first: Round | Exception) -> WindowResult:
        kept = False
        try:
            if isinstance(first, Exception):
                raise first
            assert instance is not None
            result = await drive(
                instance,
                first,
                executor=executor,
                commit=window.commit,
                transport=transport,
                clock=clock,
                limits=prepared.limits,
                last_persisted=window.request.persisted,
                tag=window.tag,
                inbox=window.inbox,
            )
            if keep_sandbox and result.quiescent and result.ok:
                kept = True
                return dataclasses.replace(result, sandbox=instance)
            return result
        finally:
            if not kept and instance is not None:
                instance.close()

    results = await asyncio.gather(
        *(finish(w, instance, first) for w, (instance, first) in zip(windows, begun, strict=True)),
        return_exceptions=True,
    )
    out: list[WindowResult | Exception] = []
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result  # cancelled
        out.append(result)
    return out
