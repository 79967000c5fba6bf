"""A round of a settle window, committed: ``runtime.Round`` -> ``store.RoundCommit`` -> subscribers.

One transaction per round (snapshot, history rows, timer changes, log lines, index entries) with an
optimistic check on the instance's ``seq``; only after it returns do subscribers hear of the round's
transitions (``on_commit``, in order) and the runtime perform the round's effects.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from runtime import Clock, LogLine, Round

from .errors import Unavailable
from .mailbox import Request
from .snapshot import InstanceSnapshot
from .store import Lease, LogRecord, RoundCommit, Store, TimerSet, TransitionRecord

__all__ = ["IndexValues", "InstanceLogs", "OnCommit", "RoundCommitter", "Window"]

log = logging.getLogger("statehost.instances")

OnCommit = Callable[[InstanceSnapshot], None]
"""Told of every committed transition, in order, after its commit (real-time fan-out)."""
IndexValues = Callable[[str, Any], Awaitable[dict[str, list[str]]]]
"""(version id, context) -> index entries, computed for every round with transitions."""


@dataclass
class Window:
    """What the commits of one window keep between rounds."""

    request: Request
    instance_id: int | None
    seq: int
    ts: int
    version_id: str
    view: InstanceSnapshot | None
    participants: list[Request] = field(default_factory=list)
    parent: Mapping[str, Any] | None = None
    """The instance's persistent parent; with an ``invokeId`` it hears of the instance's end."""
    lease: Lease | None = None
    own_committed: bool = False
    """The round of the request that opened the window is committed."""


def record(line: LogLine, now: int) -> LogRecord:
    """Log lines are stamped with their commit time (the guest's clock is frozen at the step's start,
    and readers page through logs by time: wire-api 5)."""
    return LogRecord(now, line.stream, line.level, line.text)


class InstanceLogs:
    """Log lines that belong to no committed round (a refused event, allowRead, an export)."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def store_lines(
        self, org_id: str, machine_slug: str, instance_name: str, version_id: str, lines: tuple[LogLine, ...]
    ) -> None:
        if lines:
            now = self.clock.now_ms()
            try:
                await self.store.insert_logs(
                    org_id, machine_slug, instance_name, version_id, [record(line, now) for line in lines]
                )
            except Unavailable as exc:  # a full disk must not fail a read, or a committed request
                log.warning("instance %s: %d log lines dropped: %s", instance_name, len(lines), exc)


class RoundCommitter:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        on_timers_changed: Callable[[], None] = lambda: None,
        on_commit: OnCommit | None = None,
        index_values: IndexValues | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_timers_changed = on_timers_changed
        self.on_commit = on_commit
        self.index_values = index_values

    async def commit(self, window: Window, round_: Round, tag: object) -> int:
        """Commit one round of ``window``; returns the instance's seq after it."""
        now = self.clock.now_ms()
        assert round_.persisted is not None
        transitions = []
        for t in round_.transitions:
            window.seq += 1
            window.ts = max(now, window.ts + 1)
            transitions.append(
                TransitionRecord(
                    window.seq, window.ts, t.state, t.event or {}, t.public_context, t.tags, t.done, t.context
                )
            )
        timer_ops: list[tuple[Literal["set", "cancel", "cancel_all"], Any]] = []
        for op in round_.timers:
            if op.op == "set":
                assert op.event is not None and op.delay_ms is not None
                timer_ops.append(("set", TimerSet(op.id, op.event, now + op.delay_ms, op.target)))
            elif op.op == "cancel":
                timer_ops.append(("cancel", op.id))
            else:
                timer_ops.append(("cancel_all", None))
        parent = window.parent
        if parent is not None and "invokeId" in parent and any(t.done for t in round_.transitions):
            # persistentInvocableSource: the invoking parent hears of the end, like XState's own.
            output = next(t.output for t in round_.transitions if t.done)
            event = {"type": f"done.invoke.{parent['invokeId']}", "data": output}
            back = {"machineName": parent["machineName"], "machineInstanceName": parent["machineInstanceName"]}
            timer_ops.append(("set", TimerSet(None, event, now, {**back, "kind": "done"})))
        request = window.request
        timer = tag.timer if isinstance(tag, Request) else None
        context = round_.transitions[-1].context if round_.transitions else (window.view.context if window.view else {})
        index_values = None
        if transitions and self.index_values is not None:
            index_values = await self.index_values(window.version_id, context)
        commit = RoundCommit(
            instance_id=window.instance_id or 0,
            index_values=index_values,
            expected_seq=window.seq - len(transitions),
            persisted=round_.persisted,
            version_id=window.version_id,
            transitions=transitions,
            context=context,
            timer_ops=timer_ops,
            delete_timer_id=timer.id if timer is not None else None,
            logs=[record(line, now) for line in round_.logs],
            org_id=request.org_id,
            machine_slug=request.machine_slug,
            instance_name=request.instance_name,
            lease=window.lease,
        )
        if window.instance_id is None:
            window.instance_id = await self.store.insert_instance(
                request.machine_id, request.instance_name, commit, now, parent=request.parent
            )
        else:
            await self.store.commit_round(commit, now)
        if transitions:
            snapshots = [
                InstanceSnapshot.committed(
                    org_id=request.org_id,
                    machine_id=request.machine_id,
                    machine_slug=request.machine_slug,
                    instance_name=request.instance_name,
                    version_id=window.version_id,
                    instance_id=window.instance_id,
                    seq=rec.seq,
                    ts=rec.ts,
                    state=rec.state,
                    public_context=rec.public_context,
                    tags=rec.tags,
                    done=rec.done,
                    context=transition.context,
                )
                for rec, transition in zip(transitions, round_.transitions, strict=True)
            ]
            window.view = snapshots[-1]
            if self.on_commit is not None:
                for snapshot in snapshots:
                    self.on_commit(snapshot)
        if isinstance(tag, Request) and tag is not request:
            window.participants.append(tag)
        elif tag is request:
            window.own_committed = True
        if timer_ops:
            self.on_timers_changed()
        return window.seq
