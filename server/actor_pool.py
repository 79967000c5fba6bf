"""Live actors for the window runner: one ``runtime.ActorHost`` per prepared machine version.

A version belongs to one machine of one org, so two orgs or two machines never share a VM; the
host spreads the version's instances over ``actor_vms`` VMs. Hosts are built by one factory
(:data:`HostFactory`, default :func:`make_actor_host`) so that another host with the same
interface (a worker process's) can be slotted in. An actor is keyed by its instance's row id and
creation time, so a name reused by a new instance, or a row id reused after a delete, never finds
the old instance's actor; the sequence check (``ActorHost.step``'s ``committed_seq``) makes any
instance moved on elsewhere (another node, another process, an upgrade) restore from its row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from runtime import ActorHost, ActorSettings, LostActor, PreparedMachine, Runner

__all__ = ["ActorPool", "HostFactory", "make_actor_host"]

log = logging.getLogger("statehost.instances")

HostFactory = Callable[[PreparedMachine, ActorSettings], ActorHost]
"""Builds the live-actor host of one prepared machine version."""

IDLE_SWEEP_S = 5.0
"""A version's idle actors are looked for at a window end at most this often (real time)."""


def make_actor_host(prepared: PreparedMachine, settings: ActorSettings) -> ActorHost:
    """The in-process host: the version's VMs in this process, entered from the sandbox workers."""
    return ActorHost(prepared, settings)


def actor_key(instance_id: int, created_ms: int) -> str:
    """An instance's actor name: stable for its life, never another instance's."""
    return f"{instance_id}:{created_ms}"


class ActorPool:
    def __init__(self, settings: ActorSettings, factory: HostFactory = make_actor_host) -> None:
        self.settings = settings
        self.factory = factory
        self._hosts: dict[str, ActorHost] = {}
        """version id -> its host."""
        self._swept: dict[str, float] = {}
        self.lost = 0
        """Since start: actors discarded with a VM that another actor's fault condemned."""
        self.lost_open = 0
        """Of those, actors whose window was open (it ended with a late fault)."""

    def host(self, version_id: str, prepared: PreparedMachine) -> ActorHost:
        host = self._hosts.get(version_id)
        if host is None or host.prepared is not prepared:
            if host is not None:  # the version was prepared again (evicted from the cache meanwhile)
                asyncio.get_running_loop().run_in_executor(None, host.close)
            host = self._hosts[version_id] = self.factory(prepared, self.settings)
        return host

    async def after_window(self, version_id: str, host: ActorHost, now_ms: int, runner: Runner) -> None:
        """Bookkeeping at a window's end: actors lost to a co-hosted
        fault are logged (their next event restores them; an open window among them has ended or
        ends with a late fault, its cut-off services' error events delivered on the next event), memory
        pressure is logged, and now and then idle actors are dropped."""
        lost: list[LostActor] = host.take_lost()
        if lost:
            self.lost += len(lost)
            self.lost_open += sum(1 for actor in lost if actor.open_window)
            log.info("version %s: %d live actors discarded with their VM (%s)", version_id, len(lost), lost[0].reason)
        for pressure in host.take_memory_pressure():
            log.info(
                "version %s: VM %d over its memory budget (%d > %d bytes, crossed by %s); %d idle actors dropped",
                version_id,
                pressure.vm,
                pressure.heap_bytes,
                pressure.budget_bytes,
                pressure.crossed_by,
                len(pressure.evicted),
            )
        now = time.monotonic()
        if now - self._swept.get(version_id, 0.0) >= IDLE_SWEEP_S:
            self._swept[version_id] = now
            await runner.run(host.evict_idle, now_ms)  # enters the VMs: off the event loop

    def drop(self, version_id: str) -> None:
        """The version left the machine cache: its VMs go (its actors restore when next needed)."""
        host = self._hosts.pop(version_id, None)
        self._swept.pop(version_id, None)
        if host is not None:
            # Closing waits for an entry in progress (the VM's lock): never on the event loop.
            asyncio.get_running_loop().run_in_executor(None, host.close)

    def stats(self) -> dict[str, int]:
        """For /health: live actors, open VMs, and what happened to actors since start."""
        live = vms = steps = live_steps = restores = discards = evictions = 0
        for host in self._hosts.values():
            s = host.stats()
            live += s.live
            vms += s.vms_open
            steps += s.steps
            live_steps += s.live_steps
            restores += s.restores
            discards += s.vm_discards
            evictions += s.evictions
        return {
            "versions": len(self._hosts),
            "live": live,
            "vms": vms,
            "steps": steps,
            "live_steps": live_steps,
            "restores": restores,
            "vm_discards": discards,
            "evictions": evictions,
            "lost": self.lost,
            "lost_open": self.lost_open,
        }

    def close(self) -> None:
        for host in self._hosts.values():
            host.close()
        self._hosts.clear()
