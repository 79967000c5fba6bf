"""The window runner: one settle window of one instance, the same path for every request.

The mailbox hands it the request at the head of an instance's inbox. Under the instance's lease
(several nodes on one database) it reads the row, admits the request (every precheck is here: a
create finds no instance, others find it unpaused and their timer still set), upgrades the instance
first when it has a desired version, and runs the window: on the instance's live actor
(``runtime.run_actor_window``, server/actor_pool.py) or in a pristine sandbox
(``runtime.run_window``; a create, or ``sandbox_mode`` pristine). Each round is
committed (server/rounds.py) before its effects run, requests that arrive meanwhile join it, and
when it settles everyone who took part gets the latest committed state.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from runtime import (
    ActorBatchWindow,
    BatchWindow,
    Clock,
    Delivery,
    Executor,
    Inbox,
    Limits,
    Round,
    StepRequest,
    Transport,
    WindowResult,
    WorkerLost,
    run_actor_window,
    run_actor_windows,
    run_window,
    run_windows,
)

from .actor_pool import ActorPool, actor_key
from .errors import Conflict, InvalidParameter, NotFound, Paused, Timeout, Unavailable
from .leases import Leases
from .machine_cache import MachineCache
from .mailbox import Request, WindowFailed, error_for
from .rounds import InstanceLogs, RoundCommitter, Window
from .snapshot import InstanceSnapshot
from .store import InstanceRow, Store
from .upgrades import Upgrader

__all__ = ["WindowRunner"]

log = logging.getLogger("statehost.instances")


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
        actors: ActorPool | None = None,
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
        self.actors = actors
        """Live actors (``sandbox_mode`` actors); None: a pristine sandbox for every window."""
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
        lane = self.executor.lane(request.org_id)
        if self.actors is not None and row is not None:
            # The instance's live actor, if it holds exactly the committed row (else restored from it).
            host = self.actors.host(window.version_id, prepared)

            async def confirm(round_: Round, tag: object) -> int:
                return await self.committer.commit(window, round_, tag)

            try:
                result, _ = await run_actor_window(
                    host,
                    actor_key(row.id, row.created_ms),
                    row.seq,
                    step,
                    executor=lane,
                    commit=confirm,
                    transport=self.transport,
                    clock=self.clock,
                    tag=request,
                    inbox=inbox,
                )
            except Exception as exc:
                raise self._failed(request, window, exc) from exc
            finally:
                await self.actors.after_window(window.version_id, host, self.clock.now_ms(), lane)
        else:
            # A create (its instance id is known only once committed), or pristine mode.

            async def commit(round_: Round, tag: object) -> None:
                await self.committer.commit(window, round_, tag)

            try:
                result = await run_window(
                    prepared,
                    step,
                    executor=lane,
                    commit=commit,
                    transport=self.transport,
                    clock=self.clock,
                    tag=request,
                    inbox=inbox,
                )
            except Exception as exc:
                raise self._failed(request, window, exc) from exc
        await self._finish(request, window, result)

    @staticmethod
    def _failed(request: Request, window: Window, exc: Exception) -> WindowFailed:
        committed = {*window.participants, *([request] if window.own_committed else [])}
        if isinstance(exc, WorkerLost):
            # The worker process running the actor died (``sandbox_workers``): nothing of a request
            # whose round was not committed is stored, so its sender may send it again. The actor
            # restores from its committed row on its next event (the sequence check).
            exc = Unavailable(f"the sandbox worker running the instance was lost; retry ({exc})")
        return WindowFailed(exc, committed, window.view)

    async def _finish(self, request: Request, window: Window, result: WindowResult) -> None:
        for task in result.detached:
            self.detached.add(task)
            task.add_done_callback(self.detached.discard)
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

    def close(self) -> None:
        if self.actors is not None:
            self.actors.close()

    # -- a batch: windows of several instances of one version (server/delivery.py) ----------------------

    async def run_group(
        self, version_id: str, items: Sequence[tuple[Request, Inbox, InstanceRow]]
    ) -> list[Exception | None]:
        """Windows of instances of ``version_id`` whose rows were read already and admitted (one
        node: no lease; running, no upgrade due), each opened by an event request (a due timer):
        begun in one executor call per VM (their live actors' steps, ``runtime.run_actor_windows``; in
        pristine mode fresh sandboxes, ``runtime.run_windows``), each then run on as :meth:`run`
        runs one, their rounds committed concurrently (the store groups them into one
        transaction). No timer precheck: the round's commit deletes the timer row or fails, so a
        timer cancelled meanwhile is never delivered. Per item, None or the error :meth:`run`
        would have raised."""
        assert self.leases is None
        prepared = await self.machines.prepared(version_id)
        lane = self.executor.lane(items[0][0].org_id)
        windows: list[Window] = []
        steps: list[StepRequest] = []
        for request, _, row in items:
            windows.append(
                Window(request, row.id, row.seq, row.ts, row.version_id, InstanceSnapshot.of(row), parent=row.parent)
            )
            steps.append(
                StepRequest(
                    "event",
                    row.name,
                    request.auth_context,
                    persisted=row.persisted,
                    event=request.event,
                    parent=row.parent,
                )
            )
        results: list[WindowResult | Exception] = []
        if self.actors is not None:
            host = self.actors.host(version_id, prepared)
            batch = [
                ActorBatchWindow(
                    actor_key(row.id, row.created_ms),
                    row.seq,
                    step,
                    functools.partial(self.committer.commit, window),
                    tag=request,
                    inbox=inbox,
                )
                for (request, inbox, row), window, step in zip(items, windows, steps, strict=True)
            ]
            # One executor call per VM: one VM's entries are serialised by its lock, so calls for
            # different VMs run in parallel on different workers instead of queueing on the locks.
            by_vm: dict[int, list[int]] = {}
            for n, entry in enumerate(batch):
                by_vm.setdefault(host.vm_index(entry.instance_id), []).append(n)
            try:
                per_vm = await asyncio.gather(
                    *(
                        run_actor_windows(
                            host, [batch[n] for n in ns], executor=lane, transport=self.transport, clock=self.clock
                        )
                        for ns in by_vm.values()
                    )
                )
            finally:
                await self.actors.after_window(version_id, host, self.clock.now_ms(), lane)
            results = [RuntimeError("not run")] * len(batch)
            for ns, outs in zip(by_vm.values(), per_vm, strict=True):
                for n, out in zip(ns, outs, strict=True):
                    results[n] = out if isinstance(out, Exception) else out[0]
        else:

            async def commit(window: Window, round_: Round, tag: object) -> None:
                await self.committer.commit(window, round_, tag)

            results = await run_windows(
                prepared,
                [
                    BatchWindow(step, functools.partial(commit, window), tag=request, inbox=inbox)
                    for (request, inbox, _), window, step in zip(items, windows, steps, strict=True)
                ],
                executor=lane,
                transport=self.transport,
                clock=self.clock,
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
