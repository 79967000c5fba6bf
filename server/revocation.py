"""Revocation everywhere: a deleted key, a deleted machine or a revoked user stops working on every
node, within a documented bound (docs/threat-model.md, "Revocation"; docs/deployment.md).

Decision log:

- **What is cached.** Per process: verified key-signed tokens (server/auth.py) and machine ids
  (``Store.machine_id``); per real-time socket: the caller verified when it opened. Admin tokens,
  users, memberships, identity and token providers are read from the database on every request,
  and versions never change, so those need nothing.
- **Notice at commit.** A deletion sends ``NOTIFY statehost_authority`` *inside* its transaction
  (PostgreSQL delivers it at the commit, and only if it commits); every node's listener calls
  ``Store.forget``, which drops the cached entries and tells this module. The deleting node forgets
  right after its own commit, before the delete answers, so one node (SQLite) revokes at once.
- **A lost notice is bounded, not trusted.** Notices are not replayed to a listener whose
  connection dropped: when the listener is found lost (checked every :data:`POLL_S`) the node
  forgets everything and listens again; and every cached entry expires anyway
  (``VERIFIED_TOKEN_TTL_S`` = 5 s, ``MACHINE_ID_TTL_S`` = 2 s), so a notice lost without the
  connection dropping is covered by those TTLs.
- **Sockets.** A socket's caller is re-checked against the database (``still_authorized``) when a
  notice names its key, and every :data:`RECHECK_S` for all sockets (the path for a revoked user or
  a lost notice). A socket whose caller lost its authority has each subscription ended with the
  ``error`` message the official client routes to it (403 ``missing-user``), and later subscribes
  on it fail the same way; the socket stays open (closing it would only make the client reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from .auth import Caller, still_authorized
from .db import Listener
from .errors import MissingUser
from .loops import repeat
from .store import Store
from .subscriptions import Connection, Hub

__all__ = ["POLL_S", "RECHECK_S", "Revocations"]

log = logging.getLogger("statehost.revocation")

POLL_S = 1.0
"""How often a node checks that its notice listener is still connected."""
RECHECK_S = 5.0
"""How often every open real-time socket's caller is re-checked against the database."""


class Revocations:
    def __init__(self, store: Store, hub: Hub, *, recheck_s: float = RECHECK_S) -> None:
        self.store = store
        self.hub = hub
        self.recheck_s = recheck_s
        self._listener: Listener | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._urgent = asyncio.Event()
        self._named_keys: set[str] = set()
        self.revoked_sockets = 0
        """Sockets whose caller lost its authority (for tests and metrics)."""

    async def start(self) -> None:
        self.store.authority.on_forget.append(self._forgotten)
        if self.store.shared:
            self._listener = await self.store.listen_authority(self._on_notice)
            self._tasks.append(
                asyncio.create_task(
                    repeat(self._check_listener, pause_s=POLL_S, retry_s=0, what="listening for revocations", log=log),
                    name="statehost-revocation-listener",
                )
            )
        self._tasks.append(asyncio.create_task(self._sockets(), name="statehost-revocation-sockets"))

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.store.authority.on_forget.remove(self._forgotten)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._listener is not None:
            await self._listener.stop()

    # -- notices ------------------------------------------------------------------------------------

    def _on_notice(self, notice: str) -> None:
        self.store.authority.forget(notice)

    def _forgotten(self, notice: str) -> None:
        kind, _, ident = notice.partition(":")
        if kind == "key":
            # The key is gone: end its sockets' subscriptions now, without waiting for a read.
            for connection in list(self.hub.connections):
                if connection.caller is not None and connection.caller.key_id == ident:
                    self._revoke(connection, "the token's key was deleted")
        elif kind == "*":
            self._urgent.set()

    async def _check_listener(self) -> None:
        if self._listener is not None and not self._listener.lost:
            return
        # The listening connection dropped (the database restarted): notices sent meanwhile are
        # gone. Listen again, then forget everything cached (in that order: nothing is missed).
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        self._listener = await self.store.listen_authority(self._on_notice)
        self.store.authority.forget("*")

    # -- real-time sockets ----------------------------------------------------------------------------

    async def _sockets(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.recheck_s):
                    await self._urgent.wait()
            self._urgent.clear()
            try:
                await self.recheck_sockets()
            except Exception:
                log.warning("re-checking real-time callers failed; trying again", exc_info=True)

    async def recheck_sockets(self) -> None:
        """Re-check every open socket's caller against the database (one read per distinct caller)."""
        verdicts: dict[tuple[object, ...], bool] = {}
        for connection in list(self.hub.connections):
            caller = connection.caller
            if caller is None:
                if connection.subscriptions:  # subscribed while it was being revoked
                    self._revoke(connection, "the caller's authority was revoked")
                continue
            authority = _authority(caller)
            if authority not in verdicts:
                verdicts[authority] = await still_authorized(self.store, caller)
            if not verdicts[authority] and connection.caller is caller:
                self._revoke(connection, "the caller's authority was revoked")

    def _revoke(self, connection: Connection, reason: str) -> None:
        self.revoked_sockets += 1
        connection.caller = None
        connection.auth_error = MissingUser(reason)
        for subscription in list(connection.subscriptions.values()):
            self.hub.remove(subscription)
            connection.send(
                json.dumps(
                    {"type": "error", "requestId": subscription.request_id, "status": 403, "code": "missing-user"}
                )
            )


def _authority(caller: Caller) -> tuple[object, ...]:
    """What ``still_authorized`` looks at: callers equal in it share one check."""
    return (caller.kind, caller.key_id, caller.user_id, caller.generation, caller.org_id, caller.scopes)
