"""Instance leases: one node at a time runs an instance's settle window (several nodes, one
PostgreSQL database; docs/deployment.md).

Decision log:

- **A lease per settle window, fenced by its epoch.** A node takes an instance's lease before it
  reads the instance (a conditional upsert that bumps the epoch: free, released, lapsed, or its
  own), runs the window, and releases it. Every commit of the window checks, in its own
  transaction, that (node, epoch) is still the lease (``Store._fence``, ``SELECT ... FOR SHARE``),
  besides the instance's ``seq``. A paused or partitioned node whose lease lapsed and was taken
  can therefore never commit again, even if the instance did not move on. No row lock is held
  across the window: only the commit's own transaction locks anything.
- **Any node accepts any request.** A request for an instance another node holds waits for the
  lease (polling with backoff, up to the settle window plus a lease lifetime) rather than being
  forwarded: correctness never depends on routing. A load balancer that routes an instance to
  one node (by name) avoids the waiting.
- **Database time.** Expiry is computed with PostgreSQL's clock, so nodes need not agree on the
  time; the injected clock of the instance engine stays the machines' time.
- **Renewal and recovery.** A heartbeat renews the leases of this node's open windows every third
  of their lifetime (a lease whose release failed is not renewed: it lapses). A node that dies
  leaves its leases unreleased; once lapsed, any node may take them.
  The same loop looks for such orphans whose instance had services running (their node cut them
  off) and runs a ``recover`` window there, which delivers those services' error events, as the
  next event would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable

from .errors import Unavailable
from .loops import repeat
from .store import Lease, Store

__all__ = ["Leases", "default_node_id"]

log = logging.getLogger("statehost.leases")

FIRST_WAIT_S = 0.002
MAX_WAIT_S = 0.05
ORPHAN_BATCH = 64


def default_node_id() -> str:
    """Host name, process id and a few random characters: unique per process, readable in logs."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Leases:
    def __init__(self, store: Store, node_id: str, ttl_s: float) -> None:
        self.store = store
        self.node_id = node_id
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.held: dict[tuple[int, str], int] = {}
        """(machine id, name) -> epoch of the leases this node's open windows hold (only these are
        renewed: a lease whose release failed lapses on its own)."""
        self.acquired = 0
        self.waited = 0
        """Acquisitions that had to wait for another node's window (a sign of poor routing)."""

    async def acquire(self, machine_id: int, name: str, within_s: float) -> Lease:
        """This node's lease on the instance, waiting while another node holds it; Unavailable
        after ``within_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        wait = FIRST_WAIT_S
        waited = False
        while True:
            lease = await self.store.acquire_lease(machine_id, name, self.node_id, self.ttl_ms)
            if lease is not None:
                self.held[(machine_id, name)] = lease.epoch
                self.acquired += 1
                self.waited += waited
                return lease
            waited = True
            if loop.time() + wait > deadline:
                raise Unavailable(f"instance {name!r} is busy on another node; try again")
            await asyncio.sleep(wait)
            wait = min(MAX_WAIT_S, wait * 2)

    async def release(self, lease: Lease) -> None:
        if self.held.get((lease.machine_id, lease.name)) == lease.epoch:
            del self.held[(lease.machine_id, lease.name)]
        try:
            await self.store.release_lease(lease)
        except Exception:  # it lapses on its own; the next holder bumps the epoch anyway
            log.warning("instance %s: releasing its lease failed", lease.name, exc_info=True)

    async def run(self, recover: Callable[[int, str], Awaitable[None]]) -> None:
        """Renew this node's leases and recover orphaned instances, until cancelled."""

        async def step() -> None:
            await self.store.renew_leases(self.node_id, list(self.held), self.ttl_ms)
            for machine_id, name in await self.store.orphaned_instances(ORPHAN_BATCH):
                with contextlib.suppress(Exception):
                    await recover(machine_id, name)

        await repeat(step, pause_s=self.ttl_ms / 3000, retry_s=0, what="lease renewal", log=log)
