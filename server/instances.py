"""The instance layer's front: what routes, the timer loop and the hub call.

Every transition is committed before anyone hears of it or any effect runs. The rooms behind this
front, one concern each (docs/architecture.md, "The instance layer"):

- server/machine_cache.py: prepared versions and migrations, structures, warm-up, uploads;
- server/mailbox.py: a per-instance inbox and task, one window at a time per instance;
- server/windows.py: the window runner (prechecks, leases, the settle window);
- server/actor_pool.py: live actors, one ``runtime.ActorHost`` per prepared version;
- server/rounds.py: a round -> ``RoundCommit`` -> subscribers;
- server/upgrades.py: moving an instance to its desired version;
- server/delivery.py: timers and messages between instances;
- server/snapshot.py: ``InstanceSnapshot``, an instance's committed state.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runtime import (
    Bundler,
    Clock,
    Engine,
    Executor,
    Invoked,
    Limits,
    MachineBundle,
    PreparedMachine,
    PreparedMigration,
    ReadRequest,
    Transport,
    Upload,
)

from .actor_pool import ActorPool
from .delivery import TimerDeliverer, TimerDelivery
from .errors import ApiError, NotFound, Rejected
from .leases import Leases
from .machine_cache import MachineCache
from .mailbox import Mailbox, Request
from .rounds import IndexValues, InstanceLogs, OnCommit, RoundCommitter
from .snapshot import InstanceSnapshot
from .store import Store, TimerRow
from .upgrades import Upgrader
from .windows import WindowRunner

__all__ = ["Committed", "InstanceService", "InstanceSnapshot", "InstanceState", "TimerDelivery"]

log = logging.getLogger("statehost.instances")

InstanceState = InstanceSnapshot
"""The committed state a request is answered with (the wire's ``State``): an InstanceSnapshot."""
Committed = InstanceSnapshot
"""One transition after its commit, as subscribers are told of it: an InstanceSnapshot."""


class InstanceService:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        bundler: Bundler,
        executor: Executor,
        transport: Transport,
        clock: Clock,
        limits: Limits,
        on_timers_changed: Callable[[], None] = lambda: None,
        leases: Leases | None = None,
        actors: ActorPool | None = None,
        on_commit: OnCommit | None = None,
        index_values: IndexValues | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.executor = executor
        self.clock = clock
        self.limits = limits
        self.leases = leases
        self.actors = actors
        """Live actors (``sandbox_mode`` actors), or None: a pristine sandbox per window."""
        self.machines = MachineCache(
            store, engine, bundler, executor, clock, limits, on_evicted=actors.drop if actors else lambda _: None
        )
        self.logs = InstanceLogs(store, clock)
        self.committer = RoundCommitter(store, clock, on_timers_changed, on_commit, index_values)
        upgrader = Upgrader(store, self.machines, self.committer, self.logs, executor, transport, clock)
        self.windows = WindowRunner(
            store,
            self.machines,
            self.committer,
            upgrader,
            self.logs,
            executor,
            transport,
            clock,
            limits,
            leases=leases,
            actors=actors,
        )
        self.mailbox = Mailbox(self.windows.run, self.windows.precheck)
        self.delivery = TimerDeliverer(store, self.mailbox.submit, self.logs, clock, self.mailbox, self.windows)

    # -- collaborators (still set after construction by server/app.py and server/indexes.py) -------------

    @property
    def on_commit(self) -> OnCommit | None:
        return self.committer.on_commit

    @on_commit.setter
    def on_commit(self, hook: OnCommit | None) -> None:
        self.committer.on_commit = hook

    @property
    def index_values(self) -> IndexValues | None:
        return self.committer.index_values

    @index_values.setter
    def index_values(self, hook: IndexValues | None) -> None:
        self.committer.index_values = hook

    @property
    def prepare_counts(self) -> dict[str, float]:
        return self.machines.prepare_counts

    # -- machines ---------------------------------------------------------------------------------

    async def create_version(
        self, org_id: str, machine_slug: str, upload: Upload, *, client_info: str = "", make_current: bool = True
    ) -> str:
        """Bundle an upload, validate it in the sandbox, and store it as a version of the machine.

        Raises runtime.BundleError / InvalidMachineError for a bad upload; nothing is stored then.
        """
        machine_id = await self.store.machine_id(org_id, machine_slug)
        bundle, prepared = await self.machines.prepare_upload(upload)
        version_id = await self.store.create_version(
            machine_id,
            bundle=bundle.code,
            bundle_hash=bundle.hash,
            xstate_major=prepared.major,
            self_contained=bundle.self_contained,
            source=upload.data,
            source_name=upload.filename,
            client_info=client_info,
            now_ms=self.clock.now_ms(),
            make_current=make_current,
        )
        self.machines.remember(version_id, prepared)
        return version_id

    async def prepare_upload(self, upload: Upload) -> tuple[MachineBundle, PreparedMachine]:
        return await self.machines.prepare_upload(upload)

    def remember(self, version_id: str, prepared: PreparedMachine) -> None:
        self.machines.remember(version_id, prepared)

    async def warm_up(self, max_versions: int, budget_s: float) -> dict[str, Any]:
        return await self.machines.warm_up(max_versions, budget_s)

    async def prepare_migration_upload(self, upload: Upload) -> tuple[MachineBundle, PreparedMigration]:
        return await self.machines.prepare_migration_upload(upload)

    def remember_migration(self, migration_id: str, prepared: PreparedMigration) -> None:
        self.machines.remember_migration(migration_id, prepared)

    async def structure(self, version_id: str) -> dict[str, Any]:
        return await self.machines.structure(version_id)

    # -- requests ---------------------------------------------------------------------------------

    async def create(
        self,
        org_id: str,
        machine_slug: str,
        instance_name: str,
        *,
        context: Mapping[str, Any] | None = None,
        auth_context: Mapping[str, Any] | None = None,
        version_id: str | None = None,
    ) -> InstanceSnapshot:
        machine_id = await self.store.machine_id(org_id, machine_slug)
        request = Request(
            "create",
            machine_id,
            org_id,
            machine_slug,
            instance_name,
            dict(auth_context or {}),
            context=context,
            version_id=version_id,
        )
        return await self.mailbox.submit(request)

    async def send_event(
        self,
        org_id: str,
        machine_slug: str,
        instance_name: str,
        event: str | Mapping[str, Any],
        auth_context: Mapping[str, Any] | None,
    ) -> InstanceSnapshot:
        machine_id = await self.store.machine_id(org_id, machine_slug)
        body = {"type": event} if isinstance(event, str) else dict(event)
        request = Request("event", machine_id, org_id, machine_slug, instance_name, auth_context, event=body)
        return await self.mailbox.submit(request)

    async def recover(self, machine_id: int, instance_name: str) -> None:
        """Deliver the error events of the services a dead node cut off (server/leases.py)."""
        row = await self.store.find_instance(machine_id, instance_name)
        if row is None:
            return
        request = Request("recover", machine_id, row.org_id, row.machine_slug, instance_name, None)
        with contextlib.suppress(ApiError):
            await self.mailbox.submit(request)

    async def deliver_timer(self, timer: TimerRow) -> TimerDelivery:
        """Deliver a due timer or message (server/delivery.py); say what became of it."""
        return await self.delivery.deliver_timer(timer)

    async def deliver_timers(self, timers: Sequence[TimerRow]) -> list[TimerDelivery | Exception]:
        """Due timers and messages to different instances, in one batch (server/delivery.py)."""
        return await self.delivery.deliver_batch(timers)

    async def read(
        self, org_id: str, machine_slug: str, instance_name: str, auth_context: Mapping[str, Any] | None
    ) -> InstanceSnapshot:
        """The last committed state; ``allowRead`` decides unless ``auth_context`` is None (admin)."""
        machine_id = await self.store.machine_id(org_id, machine_slug)
        row = await self.store.find_instance(machine_id, instance_name)
        if row is None:
            raise NotFound(f"instance {instance_name!r} not found")
        if auth_context is not None and not await self.may_read(
            row.version_id, row.org_id, row.machine_slug, row.name, row.state, row.context, auth_context
        ):
            raise Rejected("the machine's authorizer rejected the request")
        return InstanceSnapshot.of(row)

    async def invoke_export(
        self,
        org_id: str,
        machine_slug: str,
        path: tuple[str, ...],
        arg: Any,
        *,
        instance_name: str = "",
    ) -> Invoked:
        """Call an exported function of the machine's current version (the HTTP API mapper), in a
        fresh sandbox off the event loop; its log lines are stored as the machine's."""
        machine_id = await self.store.machine_id(org_id, machine_slug)
        version_id = await self.store.current_version_id(machine_id)
        if version_id is None:
            raise NotFound(f"machine {machine_slug!r} has no current version")
        prepared = await self.machines.prepared(version_id)
        result = await self.executor.lane(org_id).run(prepared.invoke, path, arg, self.clock.now_ms())
        await self.logs.store_lines(org_id, machine_slug, instance_name, version_id, result.logs)
        return result

    async def may_read(
        self,
        version_id: str,
        org_id: str,
        machine_slug: str,
        instance_name: str,
        state: Any,
        context: Any,
        auth_context: Mapping[str, Any],
    ) -> bool:
        """The machine's allowRead for this state (a throw or a limit is a logged denial)."""
        prepared = await self.machines.prepared(version_id)
        decision = await self.executor.lane(org_id).run(
            prepared.authorize_read, ReadRequest(instance_name, state, context, auth_context)
        )
        await self.logs.store_lines(org_id, machine_slug, instance_name, version_id, decision.logs)
        return decision.allowed

    # -- shutdown -------------------------------------------------------------------------------------

    async def close(self, grace_s: float) -> None:
        """Stop taking requests; let open windows finish for ``grace_s``, then cut them.

        A cut window loses nothing committed: its running services are recorded as in flight and
        get their error events on the next event after the restart.
        """
        await self.mailbox.close(grace_s, also=list(self.windows.detached))
        self.windows.close()  # the live actors go last: their windows have ended or were cut
