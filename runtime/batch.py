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

from .actors import _REFUSED, ActorCommitFn, ActorStep, LiveActorHost
from .clock import Clock
from .engine import PreparedMachine, SandboxInstance
from .executor import Executor, Runner
from .protocol import Round, StepRequest
from .settle import CommitFn, Inbox, WindowResult, drive
from .transport import Transport

__all__ = ["ActorBatchWindow", "BatchWindow", "close_all", "run_actor_windows", "run_windows"]


@dataclass(eq=False)
class BatchWindow:
    """One instance's window in a batch: what ``run_window`` takes for it."""

    request: StepRequest
    commit: CommitFn
    tag: object = None
    inbox: Inbox | None = None
    sandbox: SandboxInstance | None = None
    """The live sandbox of the instance's last quiescent window (its state is ``request.persisted``)."""


def close_all(sandboxes: Sequence[SandboxInstance]) -> None:
    """Close sandboxes (on an executor thread: freeing a WASM store's memory takes a while)."""
    for sandbox in sandboxes:
        sandbox.close()


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
    spent: list[SandboxInstance] = []

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
                spent.append(instance)

    try:
        results = await asyncio.gather(
            *(finish(w, instance, first) for w, (instance, first) in zip(windows, begun, strict=True)),
            return_exceptions=True,
        )
    finally:
        if spent:  # freeing a sandbox takes a while (a WASM store's memory): off the event loop, at once
            await executor.run(close_all, spent)
    out: list[WindowResult | Exception] = []
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result  # cancelled
        out.append(result)
    return out


@dataclass(eq=False)
class ActorBatchWindow:
    """One instance's window in a batch on live actors: what ``run_actor_window`` takes for it."""

    instance_id: str
    committed_seq: int | None
    request: StepRequest
    commit: ActorCommitFn
    tag: object = None
    inbox: Inbox | None = None


async def run_actor_windows(
    host: LiveActorHost,
    windows: Sequence[ActorBatchWindow],
    *,
    executor: Executor | Runner,
    transport: Transport,
    clock: Clock,
) -> list[tuple[WindowResult, ActorStep] | Exception]:
    """``run_actor_window`` for several instances of the host's version: their first steps in one
    executor call (:meth:`ActorHost.step_many`), then each window driven on, concurrently; each
    round is committed (``commit`` returns its seq, which confirms the live actor) before its
    effects run, and an actor stays live only if its window ends quiescent."""
    steps = await executor.run(host.step_many, [(w.instance_id, w.committed_seq, w.request) for w in windows], clock)

    ends: list[tuple[str, bool]] = []

    async def finish(window: ActorBatchWindow, step: ActorStep | Exception) -> tuple[WindowResult, ActorStep]:
        if isinstance(step, Exception):
            raise step

        async def confirm(round_: Round, round_tag: object) -> None:
            seq = await window.commit(round_, round_tag)
            host.committed(window.instance_id, seq)

        keep = False
        try:
            result = await drive(
                host.sandbox(window.instance_id),
                step.round,
                executor=executor,
                commit=confirm,
                transport=transport,
                clock=clock,
                limits=host.prepared.limits,
                last_persisted=window.request.persisted,
                tag=window.tag,
                inbox=window.inbox,
            )
            keep = (result.ok and result.quiescent) or step.round.outcome in _REFUSED
            return result, step
        finally:
            live = step.round.ok or host.is_live(window.instance_id)
            if live and not host.end_window_now(window.instance_id, keep):
                ends.append((window.instance_id, keep))

    try:
        results = await asyncio.gather(
            *(finish(w, step) for w, step in zip(windows, steps, strict=True)), return_exceptions=True
        )
    finally:
        if ends:  # the ends that may enter a VM, in one call (never on the event loop)
            await executor.run(_end_all, host, ends)
    out: list[tuple[WindowResult, ActorStep] | Exception] = []
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result  # cancelled
        out.append(result)
    return out


def _end_all(host: LiveActorHost, ends: Sequence[tuple[str, bool]]) -> None:
    for instance_id, keep in ends:
        host.end_window(instance_id, keep)
