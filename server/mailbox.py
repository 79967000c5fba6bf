"""Per-instance mailboxes: one event at a time per instance, in arrival order.

Each instance that has work gets a task draining its inbox (``runtime.Inbox``). The request at the
head of the inbox opens a settle window (``WindowRunner.run``, handed in as ``run_window``);
requests that arrive while that window is open are delivered into it by the runtime (wire-api:
events join a running instance) and are answered when it ends, or at once when refused. This module
knows requests and their futures, nothing of sandboxes or SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from runtime import Delivery, Inbox, Outcome, Round

from .errors import ApiError, Conflict, InvalidParameter, MachineError, Rejected, Unavailable
from .snapshot import InstanceSnapshot
from .store import Lease, TimerRow

__all__ = ["Mailbox", "Request", "WindowFailed", "error_for"]

log = logging.getLogger("statehost.instances")

InstanceKey = tuple[int, str]
"""(machine id, instance name)."""


@dataclass(eq=False)
class Request:
    """One request to one instance, answered with the instance's committed state."""

    kind: Literal["create", "event", "timer", "recover"]
    machine_id: int
    org_id: str
    machine_slug: str
    instance_name: str
    auth_context: Mapping[str, Any] | None
    event: Mapping[str, Any] | None = None
    context: Mapping[str, Any] | None = None
    version_id: str | None = None
    timer: TimerRow | None = None
    parent: Mapping[str, Any] | None = None
    """create: the persistent instance that spawned this one."""
    lease: Lease | None = None
    """The lease of the window this request opened (several nodes on one database)."""
    done: asyncio.Future[InstanceSnapshot] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def key(self) -> InstanceKey:
        return (self.machine_id, self.instance_name)

    def resolve(self, state: InstanceSnapshot) -> None:
        if not self.done.done():
            self.done.set_result(state)

    def fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


def error_for(outcome: Outcome, message: str | None) -> ApiError:
    """The one mapping from a runtime outcome to the error a client sees (wire-api 10.3)."""
    text = message or outcome.value
    if outcome is Outcome.DENIED:
        return Rejected("the machine's authorizer rejected the request")
    if outcome in (Outcome.INVALID_EVENT, Outcome.EXCEEDED_EVENT_SIZE):
        return InvalidParameter(text, parameter="event")
    if outcome is Outcome.CANCELED:
        return Conflict(text)
    return MachineError(text, limit=outcome.limit) if outcome.limit else MachineError(text)


class WindowFailed(Exception):
    """A window failed after it started (a host fault, a lost optimistic lock or lease)."""

    def __init__(self, error: Exception, committed: set[Request], view: InstanceSnapshot | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.committed = committed
        """Requests whose own round was committed before the failure."""
        self.view = view
        """The last committed state of the window."""


RunWindow = Callable[[Request, Delivery, Inbox], Awaitable[None]]
"""Run the settle window the request at the head of ``inbox`` opens (the window runner)."""

Precheck = Callable[[Request], Callable[[], Awaitable[bool]] | None]
"""What a request must still find true when it is delivered (e.g. its timer still exists)."""


class Mailbox:
    def __init__(self, run_window: RunWindow, precheck: Precheck) -> None:
        self._run_window = run_window
        self._precheck = precheck
        self._tasks: dict[InstanceKey, tuple[Inbox, asyncio.Task[None]]] = {}
        self._open: dict[InstanceKey, set[Request]] = {}
        """Requests not answered yet, per instance (so that a cut window can answer them all)."""
        self.closing = False

    async def submit(self, request: Request) -> InstanceSnapshot:
        """Queue a request behind the instance's earlier ones; its committed state when done."""
        if self.closing:
            raise Unavailable("the server is shutting down")
        key = request.key
        delivery = Delivery(request.event or {}, request.auth_context, tag=request)
        delivery.precheck = self._precheck(request)
        delivery.accepted.add_done_callback(lambda fut: self._joined(request, fut))
        self._open.setdefault(key, set()).add(request)
        request.done.add_done_callback(lambda _: self._finished(key, request))
        running = self._tasks.get(key)
        if running is None:
            inbox = Inbox()
            inbox.put(delivery)
            task = asyncio.create_task(self._drain(key, inbox), name=f"statehost-instance-{request.instance_name}")
            self._tasks[key] = (inbox, task)
        else:
            running[0].put(delivery)
        return await request.done

    def waiting(self, key: InstanceKey) -> list[Request]:
        """The instance's requests not answered yet."""
        return list(self._open.get(key, ()))

    def tasks(self) -> list[asyncio.Task[None]]:
        return [task for _, task in self._tasks.values()]

    def _finished(self, key: InstanceKey, request: Request) -> None:
        waiting = self._open.get(key)
        if waiting is not None:
            waiting.discard(request)
            if not waiting:
                del self._open[key]

    @staticmethod
    def _joined(request: Request, accepted: asyncio.Future[Round]) -> None:
        """A delivery that joined an open window was refused: answer its sender at once."""
        if accepted.cancelled():
            return
        round_ = accepted.result()
        if round_.outcome is Outcome.CANCELED and request.kind == "create":
            request.fail(Conflict(f"instance {request.instance_name!r} already exists"))
        elif not round_.ok:
            request.fail(error_for(round_.outcome, round_.error))

    async def _drain(self, key: InstanceKey, inbox: Inbox) -> None:
        try:
            while (delivery := inbox.pop()) is not None:
                request = delivery.tag
                assert isinstance(request, Request)
                try:
                    await self._run_window(request, delivery, inbox)
                except WindowFailed as failed:
                    self._window_failed(key, request, inbox, failed)
                except ApiError as exc:
                    request.fail(exc)
                except Exception as exc:
                    log.exception("instance %s: window failed", request.instance_name)
                    request.fail(exc)
        except asyncio.CancelledError:
            # Shutdown cut this window: committed rounds stand; everyone still waiting is told.
            stopped = Unavailable("the server stopped before the request finished")
            for waiting in self.waiting(key):
                waiting.fail(stopped)
            raise
        finally:
            # No await between the last empty pop and here: nothing can have been queued meanwhile.
            self._tasks.pop(key, None)

    def _window_failed(self, key: InstanceKey, request: Request, inbox: Inbox, failed: WindowFailed) -> None:
        """Everyone who joined the failed window is told; requests still queued behind it get a
        window of their own. A request whose own round was committed before the failure gets that
        committed state: its event is in the history, and an error would make its client send it
        again."""
        queued = {delivery.tag for delivery in inbox.pending()}
        for other in self.waiting(key):
            if other in queued or other is request:
                continue
            if other in failed.committed and failed.view is not None:
                other.resolve(failed.view)
            else:
                other.fail(failed.error)
        if request in failed.committed and failed.view is not None:
            log.warning("instance %s: a later round of the window failed: %s", request.instance_name, failed.error)
            request.resolve(failed.view)
        elif isinstance(failed.error, ApiError):
            request.fail(failed.error)
        else:
            log.error("instance %s: window failed", request.instance_name, exc_info=failed.error)
            request.fail(failed.error)

    async def close(self, grace_s: float, also: list[asyncio.Task[Any]] | None = None) -> None:
        """Stop taking requests; let running windows (and ``also``) finish for ``grace_s``, then cut them."""
        self.closing = True
        tasks: list[asyncio.Task[Any]] = [*self.tasks(), *(also or [])]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- windows run outside the mailbox (a batch of due timers, server/delivery.py) ------------------------

    def take(self, request: Request) -> Inbox | None:
        """Take an idle instance for a window that runs outside the mailbox (one of a batch): None
        if a window of it runs or waits. Until :meth:`give_back`, requests to the instance queue
        in the returned inbox (and join the window while it is open), as behind any window."""
        key = request.key
        if self.closing or key in self._tasks:
            return None
        current = asyncio.current_task()
        assert current is not None
        inbox = Inbox()
        self._open.setdefault(key, set()).add(request)
        request.done.add_done_callback(lambda _: self._finished(key, request))
        self._tasks[key] = (inbox, current)  # close() waits for (or cuts) the batch's task
        return inbox

    async def run_taken(self, request: Request, inbox: Inbox) -> None:
        """The ordinary window for a taken instance's request (prechecks and all), then give it back."""
        delivery = Delivery(request.event or {}, request.auth_context, tag=request)
        delivery.precheck = self._precheck(request)
        error: BaseException | None = None
        try:
            await self._run_window(request, delivery, inbox)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.give_back(request, inbox, error)

    def give_back(self, request: Request, inbox: Inbox, error: BaseException | None = None) -> None:
        """The taken instance's window is over (``error``: how it failed, as the window runner raises
        it): its request is answered as :meth:`_drain` answers one, and requests queued meanwhile
        get windows of their own."""
        key = request.key
        if isinstance(error, WindowFailed):
            self._window_failed(key, request, inbox, error)
        elif isinstance(error, ApiError):
            request.fail(error)
        elif isinstance(error, Exception):
            log.error("instance %s: window failed", request.instance_name, exc_info=error)
            request.fail(error)
        elif error is not None:  # cancelled: the server is stopping
            stopped = Unavailable("the server stopped before the request finished")
            for waiting in self.waiting(key):
                if waiting not in {d.tag for d in inbox.pending()}:
                    waiting.fail(stopped)
        if self._tasks.get(key, (None,))[0] is not inbox:
            return
        if len(inbox):
            task = asyncio.create_task(self._drain(key, inbox), name=f"statehost-instance-{request.instance_name}")
            self._tasks[key] = (inbox, task)
        else:
            del self._tasks[key]
