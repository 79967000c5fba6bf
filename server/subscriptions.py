"""Real-time fan-out of committed transitions to WebSocket subscribers (wire-api section 4).

Decision log:

- Updates come from ``InstanceService.on_commit``, i.e. only after their transition is committed.
  ``publish`` never blocks the instance: it hands the update to a per-instance publisher task, which
  keeps updates in commit order.
- ``allowRead`` is re-checked for every update (statehost choice of wire-api 4.3): once per distinct
  authContext among the instance's subscribers, against the state and full context of that update.
  A subscriber who may no longer read is skipped for that update.
- Every subscription remembers the newest ``ts`` it was sent and never sends an older one, so the
  current state pushed on subscribe and the updates racing it arrive in ``ts`` order.
- Each connection has a bounded send queue; a consumer that falls behind is disconnected (close
  code 1013) rather than slowing the instance or other subscribers. The official client reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, KeysView, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, web

from .auth import Caller
from .instances import InstanceService
from .snapshot import InstanceSnapshot

__all__ = ["Connection", "Hub", "Subscription"]

log = logging.getLogger("statehost.rt")

SEND_QUEUE = 1_000
"""Messages waiting for one connection before it is considered too slow and closed."""


def update_message(machine: str, instance: str, state: InstanceSnapshot) -> str:
    """The ``instance-update`` message of a state (``InstanceSnapshot.update_message``)."""
    return state.update_message(machine, instance)


@dataclass(eq=False)
class Subscription:
    connection: Connection
    request_id: str
    machine_id: int
    machine_slug: str
    instance_name: str
    auth_context: Mapping[str, Any]
    last_ts: int = -1

    @property
    def auth_key(self) -> str:
        return json.dumps(self.auth_context, sort_keys=True, separators=(",", ":"))

    def offer(self, ts: int, message: str) -> None:
        """Send unless the subscriber already has this or a newer state."""
        if ts <= self.last_ts:
            return
        self.last_ts = ts
        self.connection.send(message)


@dataclass(eq=False)
class Connection:
    ws: web.WebSocketResponse
    caller: Caller | None
    auth_error: Exception | None
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(SEND_QUEUE))
    dropped: bool = False
    closing: asyncio.Task[bool] | None = None

    def send(self, message: str) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped = True
            log.info("closing a real-time connection that fell %d messages behind", SEND_QUEUE)
            self.closing = asyncio.ensure_future(self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow"))

    async def writer(self) -> None:
        while True:
            message = await self.queue.get()
            await self.ws.send_str(message)


class Hub:
    def __init__(self, instances: InstanceService) -> None:
        self.instances = instances
        self.connections: set[Connection] = set()
        self._by_instance: dict[tuple[int, str], set[Subscription]] = {}
        self._pending: dict[tuple[int, str], asyncio.Queue[InstanceSnapshot]] = {}
        self._publishers: dict[tuple[int, str], asyncio.Task[None]] = {}
        self.pushed = 0
        self.closing = False
        self.watcher: Callable[[tuple[int, str]], Awaitable[None]] | None = None
        """Several nodes: told of each newly subscribed instance before its current state is read
        (server/cluster.py relays other nodes' commits from then on)."""

    # -- subscriptions ------------------------------------------------------------------------------

    def add(self, subscription: Subscription) -> None:
        key = (subscription.machine_id, subscription.instance_name)
        self._by_instance.setdefault(key, set()).add(subscription)
        subscription.connection.subscriptions[subscription.request_id] = subscription

    async def watch(self, subscription: Subscription) -> None:
        """After ``add`` and before reading the instance's current state."""
        if self.watcher is not None:
            await self.watcher((subscription.machine_id, subscription.instance_name))

    def subscribed(self) -> KeysView[tuple[int, str]]:
        """The instances that have subscribers: (machine id, instance name)."""
        return self._by_instance.keys()

    def remove(self, subscription: Subscription) -> None:
        key = (subscription.machine_id, subscription.instance_name)
        subs = self._by_instance.get(key)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del self._by_instance[key]
        subscription.connection.subscriptions.pop(subscription.request_id, None)

    def drop(self, connection: Connection) -> None:
        for subscription in list(connection.subscriptions.values()):
            self.remove(subscription)
        self.connections.discard(connection)

    # -- publishing ---------------------------------------------------------------------------------

    def publish(self, committed: InstanceSnapshot) -> None:
        key = (committed.machine_id, committed.instance_name)
        if key not in self._by_instance:
            return
        queue = self._pending.get(key)
        if queue is None:
            queue = self._pending[key] = asyncio.Queue()
            self._publishers[key] = asyncio.create_task(self._publisher(key, queue), name="statehost-rt-publisher")
        queue.put_nowait(committed)

    async def _publisher(self, key: tuple[int, str], queue: asyncio.Queue[InstanceSnapshot]) -> None:
        try:
            while True:
                try:
                    committed = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return  # idle: the next publish starts a new task (no await since the check)
                subscribers = list(self._by_instance.get(key, ()))
                if not subscribers:
                    continue
                allowed = await self._allowed(committed, subscribers)
                message = committed.update_message()
                for subscription in subscribers:
                    if subscription.connection.subscriptions.get(subscription.request_id) is not subscription:
                        continue  # unsubscribed or revoked while the authorizer ran
                    if allowed.get(subscription.auth_key):
                        subscription.offer(committed.ts, message)
                        self.pushed += 1
        finally:
            if self._publishers.get(key) is asyncio.current_task():
                del self._publishers[key]
                del self._pending[key]

    async def _allowed(self, committed: InstanceSnapshot, subscribers: list[Subscription]) -> dict[str, bool]:
        contexts = {s.auth_key: s.auth_context for s in subscribers}
        decisions = await asyncio.gather(
            *(
                self.instances.may_read(
                    committed.version_id,
                    committed.org_id,
                    committed.machine_slug,
                    committed.instance_name,
                    committed.state,
                    committed.context,
                    auth,
                )
                for auth in contexts.values()
            )
        )
        return dict(zip(contexts, decisions, strict=True))

    async def close_connections(self) -> None:
        """On shutdown: close every socket with 1001 (the official client reconnects elsewhere).

        Runs in ``on_shutdown``: aiohttp waits for open handlers before its cleanup, and a socket's
        handler only returns once the socket is closed.
        """
        self.closing = True
        for connection in list(self.connections):
            with contextlib.suppress(Exception):
                await connection.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    async def close(self) -> None:
        for task in list(self._publishers.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.close_connections()
