"""Real time across nodes: a subscriber on any node receives every transition, in order, whichever
node committed it (several nodes on one PostgreSQL database; docs/deployment.md).

Decision log:

- **The database is the truth; notifications are hints.** After its commits a node sends
  ``NOTIFY statehost_commits`` with ``<instance id>:<seq>`` pairs (tiny, batched: one NOTIFY per
  burst, outside the data transactions, so commits never wait for PostgreSQL's notify lock). A
  node that has subscribers for an instance reads the transitions it has not relayed yet from the
  ``transitions`` table and hands them to the hub in ``seq`` order.
- **A lost hint delays, never loses.** Notifications are not replayed to a listener that was
  disconnected, and a node may die between its commit and its hint; every ``POLL_S`` each node
  compares its subscribed instances' ``seq`` with what it relayed and catches up (and listens
  again if its listening connection was lost).
- **A name may come back as another instance.** Subscriptions are by (machine, name); the relay
  maps that to an instance id. When the poll finds the id gone (the instance was deleted), it
  resolves the name again and relays the new instance's transitions from its first, as one node's
  hub would publish them by name (tests/server/test_revocation.py).
- **One ordered path per instance.** Local commits, hints and polls all go through the same
  per-instance catch-up: a transition is relayed only after every earlier one, and a local commit
  that is exactly the next one is relayed from memory without a read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .db import Listener
from .loops import repeat
from .snapshot import InstanceSnapshot
from .store import Store
from .subscriptions import Hub

__all__ = ["CommitFeed"]

log = logging.getLogger("statehost.cluster")

POLL_S = 1.0
HINT_BYTES = 7_900
"""PostgreSQL's NOTIFY payload limit is 8,000 bytes."""
HINT_BATCH_S = 0.002


class CommitFeed:
    def __init__(self, store: Store, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self._relayed: dict[int, int] = {}
        """instance id -> the highest seq handed to the hub."""
        self._ids: dict[tuple[int, str], int] = {}
        """(machine id, name) of subscribed instances -> instance id."""
        self._locks: dict[int, asyncio.Lock] = {}
        self._vanished: set[tuple[int, str]] = set()
        """Subscribed names whose instance was deleted: relay all of whatever instance takes the name."""
        self._hints: dict[int, int] = {}
        self._hint_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: Listener | None = None

    async def start(self) -> None:
        self.hub.watcher = self.watch
        self._listener = await self.store.listen_commits(self._on_hint)
        self._tasks = [
            asyncio.create_task(self._send_hints(), name="statehost-commit-hints"),
            asyncio.create_task(self._poll(), name="statehost-commit-poll"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._listener is not None:
            await self._listener.stop()

    async def watch(self, key: tuple[int, str]) -> None:
        """A first subscriber for this instance: relay every commit after its current one (read
        before the subscriber's own first state, so that nothing falls in between)."""
        if key in self._ids:
            return
        row = await self.store.find_instance(*key)
        if row is not None and key not in self._ids:
            self._ids[key] = row.id
            self._relayed.setdefault(row.id, 0 if key in self._vanished else row.seq)
            self._vanished.discard(key)

    # -- this node's commits ------------------------------------------------------------------------

    def local(self, committed: InstanceSnapshot) -> None:
        """InstanceService.on_commit: relay to this node's subscribers and hint the other nodes."""
        self._hints[committed.instance_id] = max(committed.seq, self._hints.get(committed.instance_id, 0))
        self._hint_ready.set()
        key = (committed.machine_id, committed.instance_name)
        if key not in self.hub.subscribed():
            return
        self._ids[key] = committed.instance_id
        known = self._relayed.get(committed.instance_id)
        lock = self._locks.get(committed.instance_id)
        if (known is None or known == committed.seq - 1) and (lock is None or not lock.locked()):
            self._relayed[committed.instance_id] = committed.seq
            self.hub.publish(committed)
        else:
            self._catch_up_soon(committed.instance_id)

    async def _send_hints(self) -> None:
        while True:
            await self._hint_ready.wait()
            await asyncio.sleep(HINT_BATCH_S)  # let a burst of commits share one NOTIFY
            self._hint_ready.clear()
            hints, self._hints = self._hints, {}
            payload = ""
            for instance_id, seq in hints.items():
                pair = f"{instance_id}:{seq}"
                if payload and len(payload) + len(pair) + 1 > HINT_BYTES:
                    await self._notify(payload)
                    payload = ""
                payload = f"{payload},{pair}" if payload else pair
            if payload:
                await self._notify(payload)

    async def _notify(self, payload: str) -> None:
        try:
            await self.store.notify_commits(payload)
        except Exception:  # polling covers a lost hint
            log.warning("commit hint not sent", exc_info=True)

    # -- other nodes' commits -----------------------------------------------------------------------

    def _on_hint(self, payload: str) -> None:
        watched = set(self._ids.values())
        for pair in payload.split(","):
            instance_id, _, seq = pair.partition(":")
            if not instance_id.isdigit() or not seq.isdigit():
                continue
            iid = int(instance_id)
            if iid in watched and int(seq) > self._relayed.get(iid, 0):
                self._catch_up_soon(iid)

    def _catch_up_soon(self, instance_id: int) -> None:
        task = asyncio.ensure_future(self._catch_up(instance_id))
        task.add_done_callback(_log_failure)

    async def _catch_up(self, instance_id: int) -> None:
        lock = self._locks.setdefault(instance_id, asyncio.Lock())
        async with lock:
            row = await self.store.instance_by_id(instance_id)
            if row is None:
                return
            after = self._relayed.get(instance_id, row.seq)
            while after < row.seq:
                records = await self.store.transitions(instance_id, after_seq=after, limit=500)
                if not records:
                    break
                for record in records:
                    self.hub.publish(
                        InstanceSnapshot.committed(
                            org_id=row.org_id,
                            machine_id=row.machine_id,
                            machine_slug=row.machine_slug,
                            instance_name=row.name,
                            version_id=record.version_id or row.version_id,
                            instance_id=instance_id,
                            seq=record.seq,
                            ts=record.ts,
                            state=record.state,
                            public_context=record.public_context,
                            tags=record.tags,
                            done=record.done,
                            context=record.context,
                        )
                    )
                    after = record.seq
            self._relayed[instance_id] = max(after, self._relayed.get(instance_id, 0))

    async def _poll(self) -> None:
        await repeat(self._check_subscribed, pause_s=POLL_S, retry_s=0, what="checking subscribed instances", log=log)

    def _forget(self, key: tuple[int, str]) -> None:
        instance_id = self._ids.pop(key)
        self._relayed.pop(instance_id, None)
        self._locks.pop(instance_id, None)

    @property
    def listening(self) -> bool:
        return self._listener is not None and not self._listener.lost

    async def _check_subscribed(self) -> None:
        if not self.listening:
            # The listener's connection was lost (the database restarted): hints sent meanwhile are
            # gone, this poll catches up on them; listen again for the next ones.
            if self._listener is not None:
                await self._listener.stop()
            self._listener = await self.store.listen_commits(self._on_hint)
        subscribed = self.hub.subscribed()
        self._vanished &= set(subscribed)
        for key in list(self._ids):
            if key not in subscribed:
                self._forget(key)
        seqs = await self.store.instance_seqs(list(self._ids.values()))
        for key, instance_id in list(self._ids.items()):
            if instance_id not in seqs and self._ids.get(key) == instance_id:
                self._forget(key)  # deleted: its name may be taken by a new instance
                self._vanished.add(key)
        for key in list(subscribed):
            await self.watch(key)  # subscribed before its instance existed, or re-created
        if not seqs.keys() >= set(self._ids.values()):
            seqs = await self.store.instance_seqs(list(self._ids.values()))
        for instance_id, seq in seqs.items():
            if seq > self._relayed.get(instance_id, seq):
                self._catch_up_soon(instance_id)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("relaying another node's commits failed", exc_info=task.exception())
