"""The window runner: one settle window of one instance, the same path for every request.

The mailbox hands it the request at the head of an instance's inbox. Under the instance's lease
(several nodes on one database) it reads the row, admits the request (every precheck is here: a
create finds no instance, others find it unpaused and their timer still set), upgrades the instance
first when it has a desired version, and runs the window (``runtime.run_window``): each round is
committed (server/rounds.py) before its effects run, requests that arrive meanwhile join it, and
when it settles everyone who took part gets the latest committed state.
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runtime import (
    BatchWindow,
    Clock,
    Delivery,
    Executor,
    Inbox,
    Limits,
    Round,
    SandboxInstance,
    StepRequest,
    Transport,
    WindowResult,
    run_window,
    run_windows,
)

from .errors import Conflict, InvalidParameter, NotFound, Paused, Timeout
from .leases import Leases
from .machine_cache import MachineCache
from .mailbox import Request, WindowFailed, error_for
from .rounds import InstanceLogs, RoundCommitter, Window
from .snapshot import InstanceSnapshot
from .store import InstanceRow, Store
from .upgrades import Upgrader

__all__ = ["WindowRunner"]

log = logging.getLogger("statehost.instances")


@dataclass(frozen=True)
class _Parked:
    """The live sandbox of an instance's last quiescent window, valid while the instance is at ``seq``
    of ``version_id``."""

    seq: int
    version_id: str
    sandbox: SandboxInstance
    size: int


async def _never() -> bool:
    return False


class WindowRunner:
    def __init__(
        self,
        store: Store,
        machines: MachineCache,
        committer: RoundCommitter,
        upgrader: Upgrader,
        logs: InstanceLogs,
        executor: Executor,
        transport: Transport,
        clock: Clock,
        limits: Limits,
        leases: Leases | None = None,
        parked_sandboxes: int = 0,
        parked_bytes: int = 0,
    ) -> None:
        self.store = store
        self.machines = machines
        self.committer = committer
        self.upgrader = upgrader
        self.logs = logs
        self.executor = executor
        self.transport = transport
        self.clock = clock
        self.limits = limits
        self.leases = leases
        """Several nodes on one database: a window runs only under its instance's lease."""
        self.parking = parked_sandboxes
        self.parking_bytes = parked_bytes
        """The parked sandboxes' memory (as they report it) stays under this; 0: no limit but the count."""
        self._parked: collections.OrderedDict[int, _Parked] = collections.OrderedDict()
        """instance id -> the live sandbox of its last quiescent window, least recently used first."""
        self._parked_bytes = 0
        self.detached: set[Any] = set()
        """Committed effects still running after their window settled (runtime WindowResult.detached)."""

    # -- prechecks: the one place that decides whether a request may run --------------------------------

    def precheck(self, request: Request) -> Callable[[], Awaitable[bool]] | None:
        """What a request must still find true right before it runs, whether it opens a window or
        joins one: a timer (or message) must still be set; a create can never join a window (the
        window's instance exists, or is being created by the request that opened it)."""
        if request.timer is not None:
            timer_id = request.timer.id
            return lambda: self.store.timer_exists(timer_id)
        if request.kind == "create":
            return _never
        return None

    async def _admit(self, request: Request, delivery: Delivery, row: InstanceRow | None) -> bool:
        """Checks on the row read under the lease; False: answered already (nothing to run)."""
        if request.kind == "create":
            if row is not None:
                raise Conflict(f"instance {request.instance_name!r} already exists")
            return True
        if row is None:
            raise NotFound(f"instance {request.instance_name!r} not found")
        if row.status == "paused":
            raise Paused(f"instance {request.instance_name!r} is paused")
        if request.timer is not None and delivery.precheck is not None and not await delivery.precheck():
            raise Conflict("the timer was cancelled before it was delivered")
        if request.kind == "recover" and not row.persisted.get("inflight"):
            request.resolve(InstanceSnapshot.of(row))  # recovered meanwhile (by another node)
            return False
        return True

    # -- one window ---------------------------------------------------------------------------------------

    async def run(self, request: Request, delivery: Delivery, inbox: Inbox) -> None:
        """The window the request at the head of ``inbox`` opens, under its instance's lease."""
        if self.leases is None:
            await self._run(request, delivery, inbox)
            return
        within_s = self.limits.settle_window_ms / 1000 + 2 * self.leases.ttl_ms / 1000
        request.lease = await self.leases.acquire(request.machine_id, request.instance_name, within_s)
        try:
            await self._run(request, delivery, inbox)
        finally:
            await self.leases.release(request.lease)

    async def _run(self, request: Request, delivery: Delivery, inbox: Inbox) -> None:
        # Read only now: under the lease, the row is the instance's latest committed state.
        row = await self.store.find_instance(request.machine_id, request.instance_name)
        if not await self._admit(request, delivery, row):
            return
        if row is None:
            version_id = request.version_id or await self.store.current_version_id(request.machine_id)
            if version_id is None:
                raise InvalidParameter("the machine has no current version", parameter="machineVersionId")
            step = StepRequest(
                "create", request.instance_name, request.auth_context, context=request.context, parent=request.parent
            )
            window = Window(request, None, 0, 0, version_id, None, parent=request.parent, lease=request.lease)
        else:
            if row.desired_version_id is not None and row.desired_version_id != row.version_id:
                row = await self.upgrader.upgrade(request, row)
            step = StepRequest(
                "recover" if request.kind == "recover" else "event",
                row.name,
                request.auth_context,
                persisted=row.persisted,
                event=request.event,
                parent=row.parent,
            )
            window = Window(
                request,
                row.id,
                row.seq,
                row.ts,
                row.version_id,
                InstanceSnapshot.of(row),
                parent=row.parent,
                lease=request.lease,
            )
        prepared = await self.machines.prepared(window.version_id)
        parked = self._unpark(row) if row is not None and step.kind == "event" else None

        async def commit(round_: Round, tag: object) -> None:
            await self.committer.commit(window, round_, tag)

        try:
            result = await run_window(
                prepared,
                step,
                executor=self.executor.lane(request.org_id),
                commit=commit,
                transport=self.transport,
                clock=self.clock,
                tag=request,
                inbox=inbox,
                sandbox=parked,
                keep_sandbox=self.parking > 0,
            )
        except Exception as exc:
            raise self._failed(request, window, exc) from exc
        await self._finish(request, window, result)

    @staticmethod
    def _failed(request: Request, window: Window, exc: Exception) -> WindowFailed:
        committed = {*window.participants, *([request] if window.own_committed else [])}
        return WindowFailed(exc, committed, window.view)

    async def _finish(self, request: Request, window: Window, result: WindowResult) -> None:
        for task in result.detached:
            self.detached.add(task)
            task.add_done_callback(self.detached.discard)
        if result.sandbox is not None and window.instance_id is not None:
            self._park(window.instance_id, window.seq, window.version_id, result.sandbox)
        await self.logs.store_lines(
            request.org_id, request.machine_slug, request.instance_name, window.version_id, result.uncommitted_logs
        )
        if not result.ok:
            raise error_for(result.outcome, result.error)
        if result.late_fault is not None:
            log.info("instance %s: a later round failed: %s", request.instance_name, result.late_fault.error)
        if window.view is None:
            raise Timeout("the settle window ended before the first transition")
        for participant in (request, *window.participants):
            participant.resolve(window.view)

    # -- parked sandboxes -----------------------------------------------------------------------------------

    def _unpark(self, row: InstanceRow) -> SandboxInstance | None:
        """The parked sandbox of this instance, if it still holds exactly the committed state."""
        entry = self._parked.pop(row.id, None)
        if entry is None:
            return None
        self._parked_bytes -= entry.size
        if entry.seq != row.seq or entry.version_id != row.version_id:
            entry.sandbox.close()  # another process moved the instance on, or it was upgraded
            return None
        return entry.sandbox

    def _park(self, instance_id: int, seq: int, version_id: str, sandbox: SandboxInstance) -> None:
        size = sandbox.footprint()
        if self.parking_bytes and size > self.parking_bytes // 4:
            sandbox.close()  # one instance that grew its heap must not push the others out
            return
        stale = self._parked.pop(instance_id, None)
        if stale is not None:  # a window that did not take it (a recovery, a create over a stale entry)
            self._parked_bytes -= stale.size
            stale.sandbox.close()
        self._parked[instance_id] = _Parked(seq, version_id, sandbox, size)
        self._parked_bytes += size
        while len(self._parked) > self.parking or (self.parking_bytes and self._parked_bytes > self.parking_bytes):
            _, evicted = self._parked.popitem(last=False)
            self._parked_bytes -= evicted.size
            evicted.sandbox.close()

    def close(self) -> None:
        for entry in self._parked.values():
            entry.sandbox.close()
        self._parked.clear()
        self._parked_bytes = 0

    # -- a batch: windows of several instances of one version (server/delivery.py) ----------------------

    async def run_group(
        self, version_id: str, items: Sequence[tuple[Request, Inbox, InstanceRow]]
    ) -> list[Exception | None]:
        """Windows of instances of ``version_id`` whose rows were read already and admitted (one
        node: no lease; running, no upgrade due), each opened by an event request (a due timer):
        begun in one executor call (``runtime.run_windows``), each then run on as :meth:`run` runs
        one, their rounds committed concurrently (the store groups them into one transaction).
        No timer precheck: the round's commit deletes the timer row or fails, so a timer cancelled
        meanwhile is never delivered. Per item, None or the error :meth:`run` would have raised."""
        assert self.leases is None
        prepared = await self.machines.prepared(version_id)
        windows: list[Window] = []
        batch: list[BatchWindow] = []
        for request, inbox, row in items:
            window = Window(
                request, row.id, row.seq, row.ts, row.version_id, InstanceSnapshot.of(row), parent=row.parent
            )
            windows.append(window)
            step = StepRequest(
                "event", row.name, request.auth_context, persisted=row.persisted, event=request.event, parent=row.parent
            )
            batch.append(
                BatchWindow(
                    step,
                    functools.partial(self._commit_round, window),
                    tag=request,
                    inbox=inbox,
                    sandbox=self._unpark(row),
                )
            )
        results = await run_windows(
            prepared,
            batch,
            executor=self.executor.lane(items[0][0].org_id),
            transport=self.transport,
            clock=self.clock,
            # Not parked: a burst of timers' sandboxes would evict (and free, on the event loop)
            # one parked sandbox per timer, for instances that may not get another event soon.
            # run_windows frees them in one executor call.
        )
        errors: list[Exception | None] = []
        for (request, _, _), window, result in zip(items, windows, results, strict=True):
            try:
                if isinstance(result, Exception):
                    raise self._failed(request, window, result) from result
                await self._finish(request, window, result)
            except Exception as exc:
                errors.append(exc)
            else:
                errors.append(None)
        return errors

    async def _commit_round(self, window: Window, round_: Round, tag: object) -> None:
        await self.committer.commit(window, round_, tag)
