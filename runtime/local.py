"""An in-memory host for one instance: the host contract without durability.

It does what the server does with SQLite, in a few dicts: commits each round (through a JSON round
trip, so nothing survives that would not survive the database), keeps the instance's timer table
with absolute due times, and delivers due timers in order as ordinary events. Used by the tests, the
benchmarks and ``statehost run`` (running a machine locally without a server).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .clock import Clock
from .engine import PreparedMachine
from .executor import Executor
from .protocol import LogLine, ReadDecision, ReadRequest, Round, StepRequest, TimerOp, Transition
from .settle import WindowResult, run_window
from .timers import TimerRow, apply_timer_op
from .transport import Transport

__all__ = ["LocalInstance"]


@dataclass
class LocalInstance:
    prepared: PreparedMachine
    executor: Executor
    transport: Transport
    clock: Clock
    name: str = "local-instance"
    persisted: Mapping[str, Any] | None = None
    current: Transition | None = None
    history: list[Transition] = field(default_factory=list)
    logs: list[LogLine] = field(default_factory=list)
    detached: list[asyncio.Task[Any]] = field(default_factory=list)
    """Committed effects that outlived their window (see WindowResult.detached)."""
    timers: dict[int, TimerRow] = field(default_factory=dict)
    """Pending durable timers and delayed messages by row number, as the server's ``timers`` table
    holds them (runtime/timers.py); several may share an XState id (``TimerRow.key``)."""
    outbox: list[TimerOp] = field(default_factory=list)
    """Messages to other persistent instances and spawns of persistent children (wire-api 7.6):
    recorded when sent, not delivered (a local instance has no others). A delayed one also has a
    row in ``timers`` until it falls due, so that ``cancel`` reaches it as on the server."""
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    # -- the requests a client can make ---------------------------------------------------------------

    async def create(
        self, context: Mapping[str, Any] | None = None, auth_context: Mapping[str, Any] | None = None
    ) -> WindowResult:
        if self.persisted is not None:
            raise RuntimeError(f"instance {self.name} already exists")
        request = StepRequest("create", self.name, dict(auth_context or {}), context=context)
        return await self._window(request)

    async def send(self, event: str | Mapping[str, Any], auth_context: Mapping[str, Any] | None = None) -> WindowResult:
        """Deliver an event; ``auth_context`` None means a host-originated event (no allowWrite)."""
        if self.persisted is None:
            raise RuntimeError(f"instance {self.name} does not exist")
        body = {"type": event} if isinstance(event, str) else dict(event)
        request = StepRequest("event", self.name, auth_context, persisted=self.persisted, event=body)
        return await self._window(request)

    async def read(self, auth_context: Mapping[str, Any]) -> ReadDecision:
        assert self.current is not None
        request = ReadRequest(self.name, self.current.state, self.current.context, auth_context)
        decision = await self.executor.run(self.prepared.authorize_read, request)
        self.logs.extend(decision.logs)
        return decision

    async def advance_to(self, when_ms: int, clock_set: Any) -> list[WindowResult]:
        """Move the clock to ``when_ms``, delivering every timer due on the way, in due order.

        ``clock_set`` moves the injected clock (``FakeClock.set``); timers set by a delivered timer
        that fall due before ``when_ms`` are delivered too.
        """
        results = []
        while True:
            due = self.next_due()
            if due is None or due.due_ms > when_ms:
                break
            clock_set(max(due.due_ms, self.clock.now_ms()))
            del self.timers[due.id]
            if due.target is None:  # a message leaves (it is in the outbox); an own timer is an event
                results.append(await self.send(dict(due.event), auth_context=None))
        clock_set(when_ms)
        return results

    def timer_keys(self) -> set[str]:
        return {row.key for row in self.timers.values()}

    def next_due(self) -> TimerRow | None:
        return min(self.timers.values(), key=lambda t: (t.due_ms, t.id), default=None)

    # -- the host contract ----------------------------------------------------------------------------

    async def _window(self, request: StepRequest) -> WindowResult:
        result = await run_window(
            self.prepared,
            request,
            executor=self.executor,
            commit=self._commit,
            transport=self.transport,
            clock=self.clock,
        )
        self.logs.extend(result.uncommitted_logs)
        self.detached.extend(result.detached)
        return result

    async def _commit(self, round_: Round, tag: object = None) -> None:
        now = self.clock.now_ms()
        # The database stores JSON: keep only what survives a JSON round trip.
        if round_.persisted is not None:
            self.persisted = json.loads(json.dumps(round_.persisted))
        for op in round_.timers:
            if op.op == "set" and op.target is not None:
                self.outbox.append(op)
            apply_timer_op(self.timers, op, now_ms=now, row_id=next(self._seq))
        for transition in round_.transitions:
            self.history.append(transition)
            self.current = transition
        self.logs.extend(round_.logs)
