"""Timer and message delivery: a due timer row becomes a request to its instance (or, with a
target, a message to another instance, a spawn, or a ``done.invoke``), and the outcome becomes a
``TimerDelivery`` the timer loop (server/timers.py) acts on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

from runtime import Clock, Inbox, LogLine

from .errors import ApiError, Conflict, InvalidParameter, NotFound, Paused, Rejected, Superseded, Unavailable
from .mailbox import Mailbox, Request
from .rounds import InstanceLogs
from .snapshot import InstanceSnapshot
from .store import InstanceRow, Store, TimerOwner, TimerRow
from .windows import WindowRunner

__all__ = ["TimerDeliverer", "TimerDelivery"]

log = logging.getLogger("statehost.instances")

TimerDelivery = Literal["delivered", "retry", "retry-paused", "unavailable", "gone"]


class TimerDeliverer:
    def __init__(
        self,
        store: Store,
        submit: Callable[[Request], Awaitable[InstanceSnapshot]],
        logs: InstanceLogs,
        clock: Clock,
        mailbox: Mailbox | None = None,
        windows: WindowRunner | None = None,
    ) -> None:
        self.store = store
        self.submit = submit
        self.logs = logs
        self.clock = clock
        self.mailbox = mailbox
        self.windows = windows
        """With both, due timers can be delivered in batches (:meth:`deliver_batch`)."""

    async def deliver_timer(self, timer: TimerRow) -> TimerDelivery:
        """Deliver a due timer as an ordinary event (no allowWrite); say what became of it.

        A timer with a target is a message of its instance to another one, a spawn, or the
        ``done.invoke`` of a persistent invocation (wire-api 7.6): see :meth:`deliver_message`.

        The owner comes with a due timer's row; if its instance has been deleted since, so has the
        timer (a cascade), and the round that must delete it fails: nothing is delivered."""
        owner = timer.owner
        if owner is None:
            row = await self.store.instance_by_id(timer.instance_id)
            if row is None:
                return "gone"
            owner = TimerOwner(row.machine_id, row.org_id, row.machine_slug, row.name)
        if timer.target is not None:
            return await self.deliver_message(timer, owner)
        request = _timer_request(timer, owner)
        try:
            await self.submit(request)
        except Paused:
            return "retry-paused"
        except (NotFound, Conflict):
            return "gone" if not await self.store.timer_exists(timer.id) else "retry"
        except Unavailable:
            # The database failed (disk full, unreachable), or the sandbox worker process running the
            # instance was lost: not the delivery (held back and retried, not counted as an attempt).
            return "unavailable"
        except ApiError as exc:
            log.info("timer %s of instance %s not delivered: %s", timer.key, owner.name, exc)
            return "retry"
        return "delivered"

    async def deliver_batch(self, timers: Sequence[TimerRow]) -> list[TimerDelivery | Exception]:
        """Due timers and messages of different destinations delivered together; what became of
        each (or the exception its delivery raised), in order.

        Each destination instance with no window running or queued is taken for the batch (the
        mailbox queues requests that arrive meanwhile behind it, or lets them join its window);
        their rows are read in ONE query; the instances of one machine version are begun in ONE
        executor call and their rounds committed concurrently, so that the store's group commit
        writes them in one transaction (``WindowRunner.run_group``). No per-timer read: neither the
        row nor a timer precheck (the round's commit deletes the timer row or fails). The unusual
        cases take the ordinary path, one window per timer: a spawn, a destination busy with
        another window, a paused or missing one, one with an upgrade due (the window runner reads
        its row again and says what is wrong, or upgrades first), and every timer when several
        nodes share the database (a window runs under its instance's lease)."""
        mailbox, windows = self.mailbox, self.windows
        if mailbox is None or windows is None or windows.leases is not None:
            return await _each(self.deliver_timer, timers)
        outcomes: dict[int, TimerDelivery | Exception] = {}
        singles: list[TimerRow] = []
        taken: list[tuple[TimerRow, Request, Inbox]] = []
        for timer in timers:
            owner = timer.owner
            if owner is None or (timer.target is not None and timer.target.get("kind") == "spawn"):
                singles.append(timer)
                continue
            if timer.target is None:
                request: Request | TimerDelivery = _timer_request(timer, owner)
            else:
                try:
                    request = await self._message_request(timer, owner)
                except Exception as exc:  # the receiver's machine could not be looked up
                    outcomes[timer.id] = exc
                    continue
            if isinstance(request, str):
                outcomes[timer.id] = request
                continue
            inbox = mailbox.take(request)
            if inbox is None:
                singles.append(timer)
            else:
                taken.append((timer, request, inbox))
        work: list[Awaitable[object]] = [_each(self.deliver_timer, singles)]
        rows: dict[tuple[int, str], InstanceRow] = {}
        try:
            if taken:
                rows = await self.store.instances_by_keys([request.key for _, request, _ in taken])
        except BaseException as exc:
            for _, request, inbox in taken:
                mailbox.give_back(request, inbox, exc)
            if not isinstance(exc, Exception):
                raise
            taken = []
        groups: dict[str, list[tuple[Request, Inbox, InstanceRow]]] = {}
        for _, request, inbox in taken:
            row = rows.get(request.key)
            if row is None or row.status == "paused" or row.desired_version_id not in (None, row.version_id):
                work.append(mailbox.run_taken(request, inbox))
            else:
                groups.setdefault(row.version_id, []).append((request, inbox, row))
        for version_id, items in groups.items():
            work.append(self._group(mailbox, windows, version_id, items))
        results = await asyncio.gather(*work, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancelled: the timer loop is stopping
        first = results[0]  # the singles' outcomes (_each raises only when cancelled)
        for timer, outcome in zip(singles, first if isinstance(first, list) else [first] * len(singles), strict=True):
            outcomes[timer.id] = outcome
        for timer, request, _ in taken:
            try:
                if timer.target is None:
                    outcomes[timer.id] = await self._outcome(timer, request.done)
                else:
                    assert timer.owner is not None
                    outcomes[timer.id] = await self._message_outcome(timer, timer.owner, request, request.done)
            except Exception as exc:  # the reads that tell "gone" from "retry" met a storage fault
                outcomes[timer.id] = exc
        return [outcomes.get(timer.id, RuntimeError("the timer's batch failed")) for timer in timers]

    @staticmethod
    async def _group(
        mailbox: Mailbox, windows: WindowRunner, version_id: str, items: list[tuple[Request, Inbox, InstanceRow]]
    ) -> None:
        try:
            errors = await windows.run_group(version_id, items)
        except BaseException as exc:
            for request, inbox, _ in items:
                mailbox.give_back(request, inbox, exc)
            raise
        for (request, inbox, _), error in zip(items, errors, strict=True):
            mailbox.give_back(request, inbox, error)

    async def _outcome(self, timer: TimerRow, done: Awaitable[InstanceSnapshot]) -> TimerDelivery:
        """What the answer to a timer's request means for the timer (as :meth:`deliver_timer` says)."""
        try:
            await done
        except Paused:
            return "retry-paused"
        except (NotFound, Conflict):
            return "gone" if not await self.store.timer_exists(timer.id) else "retry"
        except Unavailable:
            return "unavailable"  # the database failed (disk full, unreachable), not the delivery
        except ApiError as exc:
            log.info("timer %s of instance %s not delivered: %s", timer.key, timer.owner and timer.owner.name, exc)
            return "retry"
        return "delivered"

    async def deliver_message(self, timer: TimerRow, sender: TimerOwner) -> TimerDelivery:
        """A message from ``sender`` to another instance of its org, or the creation of a persistent
        child. The receiver's allowWrite sees ``authContext.stateBackedSender``. The timer row is
        removed in the transaction of the receiver's first round, so a message is delivered once in
        effect; refusals are final (logged for the sender), other failures (a receiver that does not
        exist yet, a paused one) are retried."""
        request = await self._message_request(timer, sender)
        if isinstance(request, str):
            return request
        return await self._message_outcome(timer, sender, request, self.submit(request))

    async def _message_request(self, timer: TimerRow, sender: TimerOwner) -> Request | TimerDelivery:
        """The request a message (or spawn) makes to its receiver; "retry" if its machine is unknown."""
        target = timer.target or {}
        identity = {"machineName": sender.machine_slug, "machineInstanceName": sender.name}
        auth = {"stateBackedSender": identity}
        where = f"{target.get('machineName')}/{target.get('machineInstanceName')}"
        try:
            machine_id = await self.store.machine_id(sender.org_id, str(target.get("machineName")))
        except NotFound:
            log.info("message from %s/%s: machine %s not found", sender.machine_slug, sender.name, where)
            return "retry"
        kind: Literal["create", "event"] = "create" if target.get("kind") == "spawn" else "event"
        return Request(
            kind,
            machine_id,
            sender.org_id,
            str(target["machineName"]),
            str(target["machineInstanceName"]),
            # done.invoke.<id> comes from the platform, as XState's own: no allowWrite, like a timer
            None if target.get("kind") == "done" else auth,
            event=timer.event if kind == "event" else None,
            context=target.get("context") if kind == "create" else None,
            version_id=target.get("machineVersionId") if kind == "create" else None,
            timer=timer,
            parent=({**identity, "invokeId": target["invokeId"]} if "invokeId" in target else identity)
            if kind == "create"
            else None,
        )

    async def _message_outcome(
        self, timer: TimerRow, sender: TimerOwner, request: Request, done: Awaitable[InstanceSnapshot]
    ) -> TimerDelivery:
        """What the receiver's answer means for the message's row."""
        target = timer.target or {}
        where = f"{target.get('machineName')}/{target.get('machineInstanceName')}"
        kind = request.kind
        what = "spawn of" if kind == "create" else f"event {timer.event.get('type')!r} to"
        try:
            await done
        except Paused:
            return "retry-paused"
        except NotFound:
            return "retry"  # not created yet (a spawn on its way), or gone: retried, then dropped
        except Superseded:
            return "retry"  # another node (or process) took the receiver meanwhile: nothing was applied
        except Unavailable:
            # The database failed (disk full, unreachable), or the sandbox worker process running the
            # instance was lost: not the delivery (held back and retried, not counted as an attempt).
            return "unavailable"
        except (Rejected, InvalidParameter, Conflict) as exc:
            if not await self.store.timer_exists(timer.id):
                return "gone"  # withdrawn meanwhile (cancelled by its sender)
            row = await self.store.instance_by_id(timer.instance_id)  # for its current version
            if row is None:
                return "gone"  # the sender was deleted meanwhile: nobody to tell
            text = f"[statehost] {what} {where} not delivered: {exc}"
            await self.logs.store_lines(
                sender.org_id,
                sender.machine_slug,
                sender.name,
                row.version_id,
                (LogLine("stderr", "engine", text, self.clock.now_ms()),),
            )
            return "gone"
        except ApiError as exc:
            log.info("%s %s not delivered (will retry): %s", what, where, exc)
            return "retry"
        return "delivered"


async def _each(
    deliver: Callable[[TimerRow], Awaitable[TimerDelivery]], timers: Sequence[TimerRow]
) -> list[TimerDelivery | Exception]:
    """Timers delivered one window each, concurrently (their lanes differ)."""
    outcomes = await asyncio.gather(*(deliver(t) for t in timers), return_exceptions=True)
    out: list[TimerDelivery | Exception] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome  # cancelled: the timer loop is stopping
        out.append(outcome)
    return out


def _timer_request(timer: TimerRow, owner: TimerOwner) -> Request:
    """A due timer of an instance to itself, as the request that delivers it (no allowWrite)."""
    return Request(
        "timer", owner.machine_id, owner.org_id, owner.machine_slug, owner.name, None, event=timer.event, timer=timer
    )
