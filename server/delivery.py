"""Timer and message delivery: a due timer row becomes a request to its instance (or, with a
target, a message to another instance, a spawn, or a ``done.invoke``), and the outcome becomes a
``TimerDelivery`` the timer loop (server/timers.py) acts on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from runtime import Clock, LogLine

from .errors import ApiError, Conflict, InvalidParameter, NotFound, Paused, Rejected, Superseded, Unavailable
from .mailbox import Request
from .rounds import InstanceLogs
from .snapshot import InstanceSnapshot
from .store import Store, TimerOwner, TimerRow

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
    ) -> None:
        self.store = store
        self.submit = submit
        self.logs = logs
        self.clock = clock

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
        request = Request(
            "timer",
            owner.machine_id,
            owner.org_id,
            owner.machine_slug,
            owner.name,
            None,
            event=timer.event,
            timer=timer,
        )
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

    async def deliver_message(self, timer: TimerRow, sender: TimerOwner) -> TimerDelivery:
        """A message from ``sender`` to another instance of its org, or the creation of a persistent
        child. The receiver's allowWrite sees ``authContext.stateBackedSender``. The timer row is
        removed in the transaction of the receiver's first round, so a message is delivered once in
        effect; refusals are final (logged for the sender), other failures (a receiver that does not
        exist yet, a paused one) are retried."""
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
        request = Request(
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
        what = "spawn of" if kind == "create" else f"event {timer.event.get('type')!r} to"
        try:
            await self.submit(request)
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
