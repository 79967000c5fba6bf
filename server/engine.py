"""One statehost node: storage, sandbox runtime, instance processing and timers, wired together.

Start order: store (schema migrated) -> worker pool and fetch transport -> instance service ->
timer loop (which at once delivers every timer that came due while the node was down). Stop order
is the reverse: no new timers, open windows finish or are cut, then the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from runtime import Bundler, Clock, Executor, SystemClock, WorkerPool, default_workers, make_engine

from .actor_pool import ActorPool
from .config import Settings
from .fetch import AiohttpTransport
from .indexes import Indexes
from .instances import InstanceService
from .leases import Leases, default_node_id
from .store import Store
from .timers import TimerService

__all__ = ["DurableEngine"]

log = logging.getLogger("statehost")

WORKER_THREADS = 4
"""``sandbox_workers``: calls one worker process runs at once, and executor threads added per worker."""


class DurableEngine:
    def __init__(self, settings: Settings, clock: Clock | None = None, bundler: Bundler | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.bundler = bundler or Bundler()
        self.store = Store(
            settings.database_url or settings.database,
            synchronous=settings.synchronous,
            group_commit=settings.group_commit,
            pool_size=settings.db_pool_size,
        )
        self._executor: Executor | None = None
        self.worker_pool: WorkerPool | None = None
        """``sandbox_workers``: the worker processes that run the live actors (None: in-process)."""
        self._transport: AiohttpTransport | None = None
        self._instances: InstanceService | None = None
        self._timers: TimerService | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self.node_id = settings.node_id or default_node_id()
        self.leases: Leases | None = None
        """Set on a shared (PostgreSQL) database: instance leases of this node."""
        self._lease_task: asyncio.Task[None] | None = None

    @property
    def instances(self) -> InstanceService:
        assert self._instances is not None, "the engine is not started"
        return self._instances

    @property
    def transport(self) -> AiohttpTransport:
        """The guarded HTTP client (machines' fetch; identity providers' JWKS)."""
        assert self._transport is not None, "the engine is not started"
        return self._transport

    @property
    def timers(self) -> TimerService:
        assert self._timers is not None, "the engine is not started"
        return self._timers

    async def start(self) -> None:
        await self.store.open()
        image_cache_bytes = self.settings.machine_image_cache_mb * 2**20
        actors = self.settings.sandbox_mode == "actors"
        threads = self.settings.workers or None
        if actors and self.settings.sandbox_workers != 0:
            self.worker_pool = WorkerPool(
                self.settings.engine,
                workers=self.settings.sandbox_workers,
                runtime_api=self.bundler.runtime_api,
                image_cache_bytes=image_cache_bytes,
                threads=WORKER_THREADS,
            )
            # An actor call only waits on a worker's pipe: WORKER_THREADS more executor threads per
            # worker keep every worker's threads busy (docs/decisions.md 101, 102).
            threads = threads or default_workers() + WORKER_THREADS * self.worker_pool.size
        self._executor = Executor(threads)
        self._transport = AiohttpTransport(self.settings.fetch)
        engine = make_engine(self.settings.engine, self.bundler.runtime_api, image_cache_bytes=image_cache_bytes)
        if self.store.shared:
            self.leases = Leases(self.store, self.node_id, self.settings.lease_ttl_s)
        self._instances = InstanceService(
            self.store,
            engine,
            self.bundler,
            self._executor,
            self._transport,
            self.clock,
            self.settings.limits,
            on_timers_changed=lambda: self._timers.wake() if self._timers else None,
            leases=self.leases,
            actors=self._actor_pool() if actors else None,
            # Given here, before the timer loop starts: no round may commit without its index entries
            # (server/indexes.py ``attach`` finds it set and keeps it).
            index_values=Indexes(self.store.machines).values,
        )
        # A timer claim outlives the longest delivery: a settle window, plus waiting for a lease.
        claim_ttl_ms = self.settings.limits.settle_window_ms + int(3 * self.settings.lease_ttl_s * 1000)
        self._timers = TimerService(self.store, self._instances, self.clock, self.node_id, claim_ttl_ms)
        self._timer_task = asyncio.create_task(self._timers.run(), name="statehost-timers")
        if self.leases is not None:
            self._lease_task = asyncio.create_task(self.leases.run(self._instances.recover), name="statehost-leases")

    def _actor_pool(self) -> ActorPool:
        if self.worker_pool is None:
            return ActorPool(self.settings.actor_settings())
        return ActorPool(self.settings.actor_settings(), self.worker_pool.host)

    async def stop(self) -> None:
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
            self._lease_task = None
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
            self._timer_task = None
        if self._instances is not None:
            await self._instances.close(self.settings.shutdown_grace_s)
        if self.worker_pool is not None:
            # Closing waits (bounded) for the processes to exit: off the event loop. No worker
            # outlives the server (a SIGKILLed server's workers exit at EOF on their pipes).
            await asyncio.to_thread(self.worker_pool.close)
            self.worker_pool = None
        if self._transport is not None:
            await self._transport.close()
        if self._executor is not None:
            self._executor.close()
        if self.store.shared:
            with contextlib.suppress(Exception):
                await self.store.release_timer_claims(self.node_id)
        await self.store.close()

    async def __aenter__(self) -> DurableEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
