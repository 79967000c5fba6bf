"""Instance processing: one event at a time per instance, every transition committed before anyone
hears of it or any effect runs.

Each instance that has work gets an *actor*: a task draining the instance's inbox in arrival order.
The first request starts a settle window (runtime.run_window) in a fresh sandbox; requests that
arrive while it is open join it (runtime.Inbox), as State Backed delivers events into a running
instance. Each round is committed through the store (one transaction: snapshot, history rows, timer
changes, log lines) with an optimistic check on the instance's ``seq``; only then does the runtime
perform the round's effects. When the window ends, every request that took part gets the latest
committed state. Other instances run in parallel (their sandboxes on the worker pool).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from runtime import (
    BatchWindow,
    Bundler,
    Clock,
    Delivery,
    Engine,
    Executor,
    Inbox,
    Invoked,
    Limits,
    LogLine,
    MachineBundle,
    Outcome,
    PreparedMachine,
    PreparedMigration,
    ReadRequest,
    Round,
    SandboxInstance,
    StepRequest,
    Transport,
    Upload,
    WindowResult,
    run_window,
    run_windows,
)

from .errors import (
    ApiError,
    Conflict,
    InvalidParameter,
    MachineError,
    NotFound,
    Paused,
    Rejected,
    Superseded,
    Timeout,
    Unavailable,
)
from .leases import Leases
from .store import InstanceRow, Lease, LogRecord, RoundCommit, Store, TimerOwner, TimerRow, TimerSet, TransitionRecord
from .upgrades import migration_chain

__all__ = ["Committed", "InstanceService", "InstanceState", "TimerDelivery"]

log = logging.getLogger("statehost.instances")

PREPARED_CACHE_SIZE = 256


@dataclass(frozen=True)
class InstanceState:
    """The ``State`` object of the wire contract, plus what the admin view needs."""

    ts: int
    state: Any
    public_context: Mapping[str, Any]
    tags: tuple[str, ...]
    done: bool
    context: Any = None

    def wire(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "state": self.state,
            "publicContext": dict(self.public_context),
            "tags": list(self.tags),
            "done": self.done,
        }

    @staticmethod
    def of(row: InstanceRow) -> InstanceState:
        return InstanceState(row.ts, row.state, row.public_context, tuple(row.tags), row.done, row.context)


TimerDelivery = Literal["delivered", "retry", "retry-paused", "unavailable", "gone"]


@dataclass(frozen=True)
class Committed:
    """One transition, after its commit: what subscribers are told."""

    org_id: str
    machine_id: int
    machine_slug: str
    instance_name: str
    version_id: str
    state: InstanceState
    instance_id: int = 0
    seq: int = 0


@dataclass(eq=False)
class _Request:
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
    done: asyncio.Future[InstanceState] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def resolve(self, state: InstanceState) -> None:
        if not self.done.done():
            self.done.set_result(state)

    def fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


@dataclass(frozen=True)
class _Parked:
    """The live sandbox of an instance's last quiescent window, valid while the instance is at ``seq``
    of ``version_id``."""

    seq: int
    version_id: str
    sandbox: SandboxInstance
    size: int


@dataclass
class _Window:
    """What the commit callback of one window keeps between rounds."""

    request: _Request
    instance_id: int | None
    seq: int
    ts: int
    version_id: str
    view: InstanceState | None
    participants: list[_Request] = field(default_factory=list)
    parent: Mapping[str, Any] | None = None
    """The instance's persistent parent; with an ``invokeId`` it hears of the instance's end."""
    lease: Lease | None = None
    own_committed: bool = False
    """The round of the request that opened the window is committed."""


def _error_for(outcome: Outcome, message: str | None) -> ApiError:
    """The one mapping from a runtime outcome to the error a client sees (wire-api 10.3)."""
    text = message or outcome.value
    if outcome is Outcome.DENIED:
        return Rejected("the machine's authorizer rejected the request")
    if outcome in (Outcome.INVALID_EVENT, Outcome.EXCEEDED_EVENT_SIZE):
        return InvalidParameter(text, parameter="event")
    if outcome is Outcome.CANCELED:
        return Conflict(text)
    return MachineError(text, limit=outcome.limit) if outcome.limit else MachineError(text)


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
        parked_sandboxes: int = 0,
        parked_bytes: int = 0,
        leases: Leases | None = None,
    ) -> None:
        self.limits = limits
        self.leases = leases
        """Several nodes on one database: a window runs only under its instance's lease."""
        self.parking = parked_sandboxes
        self.parking_bytes = parked_bytes
        """The parked sandboxes' memory (as they report it) stays under this; 0: no limit but the count."""
        self._parked: collections.OrderedDict[int, _Parked] = collections.OrderedDict()
        """instance id -> the live sandbox of its last quiescent window, least recently used first."""
        self._parked_bytes = 0
        self.store = store
        self.engine = engine
        self.bundler = bundler
        self.executor = executor
        self.transport = transport
        self.clock = clock
        self.on_timers_changed = on_timers_changed
        self._actors: dict[tuple[int, str], tuple[Inbox, asyncio.Task[None]]] = {}
        self._open: dict[tuple[int, str], set[_Request]] = {}
        self._detached: set[asyncio.Task[Any]] = set()
        self.index_values: Callable[[str, Any], Awaitable[dict[str, list[str]]]] | None = None
        """(version id, context) -> index entries, computed for every round with transitions."""
        self.on_commit: Callable[[Committed], None] | None = None
        """Told of every committed transition, in order, after its commit (real-time fan-out)."""
        """Committed effects still running after their window settled (runtime WindowResult.detached)."""
        """Requests not answered yet, per instance (so that a cut window can answer them all)."""
        self._prepared: collections.OrderedDict[str, PreparedMachine] = collections.OrderedDict()
        self._migrations: collections.OrderedDict[str, PreparedMigration] = collections.OrderedDict()
        self._preparing: dict[str, asyncio.Lock] = {}
        self._structures: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        """version id -> its structure (versions never change, so neither does their shape)."""
        self._closing = False
        self.prepare_counts: dict[str, float] = {"warmed": 0, "on_demand": 0, "warm_up_s": 0.0}
        """Since start: stored versions prepared by the start's warm-up, and by a request that found
        its version unprepared (an upload's own prepare counts in neither); the warm-up's seconds."""

    # -- machines ---------------------------------------------------------------------------------

    async def create_version(
        self, org_id: str, machine_slug: str, upload: Upload, *, client_info: str = "", make_current: bool = True
    ) -> str:
        """Bundle an upload, validate it in the sandbox, and store it as a version of the machine.

        Raises runtime.BundleError / InvalidMachineError for a bad upload; nothing is stored then.
        """
        machine_id = await self.store.machine_id(org_id, machine_slug)
        bundle, prepared = await self.prepare_upload(upload)
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
        self._remember(version_id, prepared)
        return version_id

    async def prepare_upload(self, upload: Upload) -> tuple[MachineBundle, PreparedMachine]:
        """Bundle an upload and load it once in the sandbox (off the event loop).

        Raises runtime.BundleError / InvalidMachineError for an upload that cannot be a version.
        """
        bundle = await self.executor.run(self.bundler.bundle, upload)
        prepared = await self.executor.run(self.engine.prepare, bundle, self.limits)
        return bundle, prepared

    def remember(self, version_id: str, prepared: PreparedMachine) -> None:
        """Keep a machine prepared at upload for the version's first instances."""
        self._remember(version_id, prepared)

    async def warm_up(self, max_versions: int, budget_s: float) -> dict[str, Any]:
        """Prepare the current versions of machines that have instances (``Store.versions_to_warm``)
        before the node reports ready, so that the first events after a restart find them prepared.
        Bounded: at most ``max_versions``, and no new one starts after ``budget_s`` seconds. On the
        WASM engine each is a persisted image read from disk (milliseconds); otherwise (native
        engine, or an image not on disk) the bundle is evaluated. Returns what it did."""
        started = time.monotonic()
        versions = await self.store.versions_to_warm(max_versions)
        warmed = 0
        for version_id in versions:
            if time.monotonic() - started > budget_s:
                break
            try:
                await self._prepared_machine(version_id, warming=True)
            except Exception as exc:  # a version that fails to load fails its own events, not the start
                log.warning("warm-up: version %s did not prepare: %s", version_id, exc)
                continue
            warmed += 1
        self.prepare_counts["warm_up_s"] = round(time.monotonic() - started, 3)
        return {"candidates": len(versions), "warmed": warmed, "seconds": self.prepare_counts["warm_up_s"]}

    async def _prepared_machine(self, version_id: str, *, warming: bool = False) -> PreparedMachine:
        cached = self._prepared.get(version_id)
        if cached is not None:
            self._prepared.move_to_end(version_id)
            return cached
        lock = self._preparing.setdefault(version_id, asyncio.Lock())
        async with lock:
            cached = self._prepared.get(version_id)
            if cached is not None:
                return cached
            row = await self.store.get_version(version_id)
            assert row.bundle is not None and row.bundle_hash is not None
            bundle = MachineBundle(row.bundle, None if row.self_contained else row.xstate_major, row.bundle_hash)
            prepared = await self.executor.run(self.engine.prepare, bundle, self.limits)
            self.prepare_counts["warmed" if warming else "on_demand"] += 1
            self._remember(version_id, prepared)
            return prepared

    def _remember(self, version_id: str, prepared: PreparedMachine) -> None:
        _cache(self._prepared, version_id, prepared)

    async def prepare_migration_upload(self, upload: Upload) -> tuple[MachineBundle, PreparedMigration]:
        """Bundle a migration and check its exports in the sandbox (off the event loop).

        Raises runtime.BundleError / InvalidMachineError for an upload that cannot be a migration.
        """
        bundle = await self.executor.run(functools.partial(self.bundler.bundle, upload, machine=False))
        prepared = await self.executor.run(self.engine.prepare_migration, bundle, self.limits)
        return bundle, prepared

    def remember_migration(self, migration_id: str, prepared: PreparedMigration) -> None:
        _cache(self._migrations, migration_id, prepared)

    async def _prepared_migration(self, migration_id: str) -> PreparedMigration:
        cached = self._migrations.get(migration_id)
        if cached is None:
            row = await self.store.migration(migration_id)
            if row is None or row["bundle"] is None:
                raise NotFound(f"migration {migration_id!r} not found")
            bundle = MachineBundle(row["bundle"], None, row["bundle_hash"])
            cached = await self.executor.run(self.engine.prepare_migration, bundle, self.limits)
        _cache(self._migrations, migration_id, cached)
        return cached

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
    ) -> InstanceState:
        machine_id = await self.store.machine_id(org_id, machine_slug)
        request = _Request(
            "create",
            machine_id,
            org_id,
            machine_slug,
            instance_name,
            dict(auth_context or {}),
            context=context,
            version_id=version_id,
        )
        return await self._submit(request)

    async def send_event(
        self,
        org_id: str,
        machine_slug: str,
        instance_name: str,
        event: str | Mapping[str, Any],
        auth_context: Mapping[str, Any] | None,
    ) -> InstanceState:
        machine_id = await self.store.machine_id(org_id, machine_slug)
        body = {"type": event} if isinstance(event, str) else dict(event)
        request = _Request("event", machine_id, org_id, machine_slug, instance_name, auth_context, event=body)
        return await self._submit(request)

    async def recover(self, machine_id: int, instance_name: str) -> None:
        """Deliver the error events of the services a dead node cut off (server/leases.py)."""
        row = await self.store.find_instance(machine_id, instance_name)
        if row is None:
            return
        request = _Request("recover", machine_id, row.org_id, row.machine_slug, instance_name, None)
        with contextlib.suppress(ApiError):
            await self._submit(request)

    async def deliver_timer(self, timer: TimerRow) -> TimerDelivery:
        """Deliver a due timer as an ordinary event (no allowWrite); say what became of it.

        A timer with a target is a message of its instance to another one, a spawn, or the
        ``done.invoke`` of a persistent invocation (wire-api 7.6): see :meth:`_deliver_message`.

        The owner comes with a due timer's row; if its instance has been deleted since, so has the
        timer (a cascade), and the round that must delete it fails: nothing is delivered."""
        owner = timer.owner
        if owner is None:
            row = await self.store.instance_by_id(timer.instance_id)
            if row is None:
                return "gone"
            owner = TimerOwner(row.machine_id, row.org_id, row.machine_slug, row.name)
        if timer.target is not None:
            return await self._deliver_message(timer, owner)
        request = _Request(
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
            await self._submit(request)
        except Paused:
            return "retry-paused"
        except (NotFound, Conflict):
            return "gone" if not await self.store.timer_exists(timer.id) else "retry"
        except Unavailable:
            return "unavailable"  # the database failed (disk full, unreachable), not the delivery
        except ApiError as exc:
            log.info("timer %s of instance %s not delivered: %s", timer.key, owner.name, exc)
            return "retry"
        return "delivered"

    async def deliver_timers(self, timers: Sequence[TimerRow]) -> list[TimerDelivery | Exception]:
        """Due timers of different instances, each to itself, delivered together: what became of each.

        Each instance with no window running or queued is taken for the batch (requests that arrive
        meanwhile queue behind it, or join its window, as behind any window); their rows are read
        in one query; those of one machine version are begun in one executor call
        (``runtime.run_windows``) and their rounds committed concurrently, so that the store's
        group commit writes them in one transaction. No precheck read: the round's commit deletes
        the timer row or fails (a timer cancelled meanwhile is never delivered). Anything unusual
        (another window busy, a paused or deleted instance, an upgrade due, several nodes) takes
        the ordinary path, one window per timer."""
        if self.leases is not None or self._closing:
            return await self._deliver_each(timers)
        singles: list[TimerRow] = []
        taken: list[tuple[TimerRow, _Request, Inbox]] = []
        for timer in timers:
            owner = timer.owner
            if timer.target is not None or owner is None:
                singles.append(timer)
                continue
            request = _Request(
                "timer",
                owner.machine_id,
                owner.org_id,
                owner.machine_slug,
                owner.name,
                None,
                event=timer.event,
                timer=timer,
            )
            inbox = self._take(request)
            if inbox is None:
                singles.append(timer)
            else:
                taken.append((timer, request, inbox))
        outcomes: dict[int, TimerDelivery | Exception] = {}

        async def each(timer: TimerRow) -> None:
            try:
                outcomes[timer.id] = await self.deliver_timer(timer)
            except Exception as exc:
                outcomes[timer.id] = exc

        work: list[Awaitable[None]] = [each(timer) for timer in singles]
        try:
            rows = await self.store.instances_by_ids([timer.instance_id for timer, _, _ in taken])
        except BaseException as exc:
            for _, request, inbox in taken:
                request.fail(exc if isinstance(exc, Exception) else Unavailable("the server is stopping"))
                self._give_back(request, inbox)
            if not isinstance(exc, Exception):
                raise
            rows = {}
        groups: dict[str, list[tuple[_Request, Inbox, InstanceRow]]] = {}
        for timer, request, inbox in taken if rows else ():
            row = rows.get(timer.instance_id)
            if row is None or row.status == "paused" or row.desired_version_id not in (None, row.version_id):
                # The ordinary window reads the row again and says what is wrong (or upgrades first).
                work.append(self._taken_window(request, inbox))
            else:
                groups.setdefault(row.version_id, []).append((request, inbox, row))
        for version_id, items in groups.items():
            work.append(self._timer_group(version_id, items))
        await asyncio.gather(*work)
        for timer, request, _ in taken:
            try:
                outcomes[timer.id] = await self._timer_outcome(timer, request.done)
            except Exception as exc:  # the read that tells gone from retry met a storage fault
                outcomes[timer.id] = exc
        return [outcomes[timer.id] for timer in timers]

    async def _deliver_each(self, timers: Sequence[TimerRow]) -> list[TimerDelivery | Exception]:
        outcomes = await asyncio.gather(*(self.deliver_timer(t) for t in timers), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancelled: the timer loop is stopping
        return [o for o in outcomes if not isinstance(o, BaseException) or isinstance(o, Exception)]

    def _take(self, request: _Request) -> Inbox | None:
        """Take an idle instance for a window run outside its actor (a batch): None if a window of
        it runs or waits. Requests that arrive meanwhile go to the returned inbox."""
        key = (request.machine_id, request.instance_name)
        if self._closing or key in self._actors:
            return None
        current = asyncio.current_task()
        assert current is not None
        inbox = Inbox()
        self._open.setdefault(key, set()).add(request)
        request.done.add_done_callback(lambda _: self._finished(key, request))
        self._actors[key] = (inbox, current)
        return inbox

    def _give_back(self, request: _Request, inbox: Inbox) -> None:
        """The taken instance's window is over: requests queued meanwhile get windows of their own."""
        key = (request.machine_id, request.instance_name)
        if self._actors.get(key, (None,))[0] is not inbox:
            return
        if len(inbox):
            task = asyncio.create_task(self._run_actor(key, inbox), name=f"statehost-instance-{request.instance_name}")
            self._actors[key] = (inbox, task)
        else:
            del self._actors[key]

    async def _taken_window(self, request: _Request, inbox: Inbox) -> None:
        delivery = Delivery(request.event or {}, None, tag=request)
        try:
            await self._window(request, delivery, inbox)
        except ApiError as exc:
            request.fail(exc)
        except Exception as exc:
            log.exception("instance %s: window failed", request.instance_name)
            request.fail(exc)
        finally:
            self._give_back(request, inbox)

    async def _timer_group(self, version_id: str, items: list[tuple[_Request, Inbox, InstanceRow]]) -> None:
        """Timers of instances of one version: begun in one executor call, committed together."""
        try:
            prepared = await self._prepared_machine(version_id)
            windows: list[_Window] = []
            batch: list[BatchWindow] = []
            for request, inbox, row in items:
                window = _Window(
                    request, row.id, row.seq, row.ts, row.version_id, InstanceState.of(row), parent=row.parent
                )
                windows.append(window)
                step = StepRequest(
                    "event", row.name, None, persisted=row.persisted, event=request.event, parent=row.parent
                )
                batch.append(
                    BatchWindow(
                        step,
                        functools.partial(self._commit, window),
                        tag=request,
                        inbox=inbox,
                        sandbox=self._unpark(row),
                    )
                )
            results = await run_windows(
                prepared,
                batch,
                executor=self.executor.lane(items[0][0].org_id),
                transport=self.transport,
                clock=self.clock,
                keep_sandbox=self.parking > 0,
            )
        except BaseException as exc:
            for request, inbox, _ in items:
                request.fail(exc if isinstance(exc, Exception) else Unavailable("the server is stopping"))
                self._give_back(request, inbox)
            raise
        await asyncio.gather(
            *(
                self._end_taken(request, inbox, window, result)
                for (request, inbox, _), window, result in zip(items, windows, results, strict=True)
            )
        )

    async def _end_taken(
        self, request: _Request, inbox: Inbox, window: _Window, result: WindowResult | Exception
    ) -> None:
        """A batch window ended: as ``_leased_window`` ends one (everyone who took part is answered)."""
        key = (request.machine_id, request.instance_name)
        try:
            if isinstance(result, Exception):
                queued = {delivery.tag for delivery in inbox.pending()}
                committed = {*window.participants, *([request] if window.own_committed else [])}
                for waiting in list(self._open.get(key, ())):
                    if waiting in queued:
                        continue
                    if waiting in committed and window.view is not None:
                        waiting.resolve(window.view)
                    elif waiting is not request:
                        waiting.fail(result)
                if request not in committed:
                    request.fail(result)
                return
            await self._finish_window(request, window, result)
        except ApiError as exc:
            request.fail(exc)
        except Exception as exc:
            log.exception("instance %s: window failed", request.instance_name)
            request.fail(exc)
        finally:
            self._give_back(request, inbox)

    async def _timer_outcome(self, timer: TimerRow, done: asyncio.Future[InstanceState]) -> TimerDelivery | Exception:
        try:
            await done
        except Paused:
            return "retry-paused"
        except (NotFound, Conflict):
            return "gone" if not await self.store.timer_exists(timer.id) else "retry"
        except Unavailable:
            return "unavailable"
        except ApiError as exc:
            log.info("timer %s not delivered: %s", timer.key, exc)
            return "retry"
        except Exception as exc:
            return exc
        return "delivered"

    async def _deliver_message(self, timer: TimerRow, sender: TimerOwner) -> TimerDelivery:
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
        request = _Request(
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
            await self._submit(request)
        except Paused:
            return "retry-paused"
        except NotFound:
            return "retry"  # not created yet (a spawn on its way), or gone: retried, then dropped
        except Superseded:
            return "retry"  # another node (or process) took the receiver meanwhile: nothing was applied
        except Unavailable:
            return "unavailable"  # the database failed (disk full, unreachable), not the delivery
        except (Rejected, InvalidParameter, Conflict) as exc:
            if not await self.store.timer_exists(timer.id):
                return "gone"  # withdrawn meanwhile (cancelled by its sender)
            row = await self.store.instance_by_id(timer.instance_id)  # for its current version
            if row is None:
                return "gone"  # the sender was deleted meanwhile: nobody to tell
            text = f"[statehost] {what} {where} not delivered: {exc}"
            await self._store_logs(
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

    async def read(
        self, org_id: str, machine_slug: str, instance_name: str, auth_context: Mapping[str, Any] | None
    ) -> InstanceState:
        """The last committed state; ``allowRead`` decides unless ``auth_context`` is None (admin)."""
        machine_id = await self.store.machine_id(org_id, machine_slug)
        row = await self.store.find_instance(machine_id, instance_name)
        if row is None:
            raise NotFound(f"instance {instance_name!r} not found")
        if auth_context is not None and not await self.may_read(
            row.version_id, row.org_id, row.machine_slug, row.name, row.state, row.context, auth_context
        ):
            raise Rejected("the machine's authorizer rejected the request")
        return InstanceState.of(row)

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
        prepared = await self._prepared_machine(version_id)
        result = await self.executor.lane(org_id).run(prepared.invoke, path, arg, self.clock.now_ms())
        await self._store_logs(org_id, machine_slug, instance_name, version_id, result.logs)
        return result

    async def structure(self, version_id: str) -> dict[str, Any]:
        """The version's shape for drawing it (``PreparedMachine.structure``), cached per version.

        Raises MachineError when the machine cannot be walked (a fault or a limit in the sandbox).
        """
        cached = self._structures.get(version_id)
        if cached is not None:
            self._structures.move_to_end(version_id)
            return cached
        prepared = await self._prepared_machine(version_id)
        result = await self.executor.run(prepared.structure, self.clock.now_ms())
        if not result.ok or not isinstance(result.structure, dict):
            raise MachineError(f"the machine's structure could not be read: {result.error}")
        _cache(self._structures, version_id, result.structure)
        return result.structure

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
        prepared = await self._prepared_machine(version_id)
        decision = await self.executor.lane(org_id).run(
            prepared.authorize_read, ReadRequest(instance_name, state, context, auth_context)
        )
        await self._store_logs(org_id, machine_slug, instance_name, version_id, decision.logs)
        return decision.allowed

    async def _submit(self, request: _Request) -> InstanceState:
        if self._closing:
            raise Unavailable("the server is shutting down")
        key = (request.machine_id, request.instance_name)
        delivery = Delivery(request.event or {}, request.auth_context, tag=request)
        if request.timer is not None:
            timer_id = request.timer.id
            delivery.precheck = lambda: self.store.timer_exists(timer_id)
        elif request.kind == "create":
            # A create that finds a window open for its instance: the instance exists (or is being
            # created by the request that opened the window).
            delivery.precheck = _never
        delivery.accepted.add_done_callback(lambda fut: self._joined(request, fut))
        waiting = self._open.setdefault(key, set())
        waiting.add(request)
        request.done.add_done_callback(lambda _: self._finished(key, request))
        actor = self._actors.get(key)
        if actor is None:
            inbox = Inbox()
            inbox.put(delivery)
            task = asyncio.create_task(self._run_actor(key, inbox), name=f"statehost-instance-{request.instance_name}")
            self._actors[key] = (inbox, task)
        else:
            actor[0].put(delivery)
        return await request.done

    def _finished(self, key: tuple[int, str], request: _Request) -> None:
        waiting = self._open.get(key)
        if waiting is not None:
            waiting.discard(request)
            if not waiting:
                del self._open[key]

    @staticmethod
    def _joined(request: _Request, accepted: asyncio.Future[Round]) -> None:
        """A delivery that joined an open window was refused: answer its sender at once."""
        if accepted.cancelled():
            return
        round_ = accepted.result()
        if round_.outcome is Outcome.CANCELED and request.kind == "create":
            request.fail(Conflict(f"instance {request.instance_name!r} already exists"))
        elif not round_.ok:
            request.fail(_error_for(round_.outcome, round_.error))

    async def _run_actor(self, key: tuple[int, str], inbox: Inbox) -> None:
        try:
            while (delivery := inbox.pop()) is not None:
                request = delivery.tag
                assert isinstance(request, _Request)
                try:
                    await self._window(request, delivery, inbox)
                except ApiError as exc:
                    request.fail(exc)
                except Exception as exc:
                    log.exception("instance %s: window failed", request.instance_name)
                    request.fail(exc)
        except asyncio.CancelledError:
            # Shutdown cut this window: committed rounds stand; everyone still waiting is told.
            stopped = Unavailable("the server stopped before the request finished")
            for waiting in list(self._open.get(key, ())):
                waiting.fail(stopped)
            raise
        finally:
            # No await between the last empty pop and here: nothing can have been queued meanwhile.
            self._actors.pop(key, None)

    # -- one settle window ---------------------------------------------------------------------------

    async def _window(self, request: _Request, delivery: Delivery, inbox: Inbox) -> None:
        if self.leases is None:
            await self._leased_window(request, delivery, inbox)
            return
        within_s = self.limits.settle_window_ms / 1000 + 2 * self.leases.ttl_ms / 1000
        request.lease = await self.leases.acquire(request.machine_id, request.instance_name, within_s)
        try:
            await self._leased_window(request, delivery, inbox)
        finally:
            await self.leases.release(request.lease)

    async def _leased_window(self, request: _Request, delivery: Delivery, inbox: Inbox) -> None:
        # Read only now: under the lease, the row is the instance's latest committed state.
        row = await self.store.find_instance(request.machine_id, request.instance_name)
        if request.kind == "create":
            if row is not None:
                raise Conflict(f"instance {request.instance_name!r} already exists")
            version_id = request.version_id or await self.store.current_version_id(request.machine_id)
            if version_id is None:
                raise InvalidParameter("the machine has no current version", parameter="machineVersionId")
            step = StepRequest(
                "create", request.instance_name, request.auth_context, context=request.context, parent=request.parent
            )
            window = _Window(request, None, 0, 0, version_id, None, parent=request.parent, lease=request.lease)
        else:
            if row is None:
                raise NotFound(f"instance {request.instance_name!r} not found")
            if row.status == "paused":
                raise Paused(f"instance {request.instance_name!r} is paused")
            if delivery.precheck is not None and not await delivery.precheck():
                raise Conflict("the timer was cancelled before it was delivered")
            if request.kind == "recover" and not row.persisted.get("inflight"):
                request.resolve(InstanceState.of(row))  # recovered meanwhile (by another node)
                return
            if row.desired_version_id is not None and row.desired_version_id != row.version_id:
                row = await self._upgrade(request, row)
            step = StepRequest(
                "recover" if request.kind == "recover" else "event",
                row.name,
                request.auth_context,
                persisted=row.persisted,
                event=request.event,
                parent=row.parent,
            )
            window = _Window(
                request,
                row.id,
                row.seq,
                row.ts,
                row.version_id,
                InstanceState.of(row),
                parent=row.parent,
                lease=request.lease,
            )
        prepared = await self._prepared_machine(window.version_id)
        parked = self._unpark(row) if row is not None and step.kind == "event" else None

        async def commit(round_: Round, tag: object) -> None:
            await self._commit(window, round_, tag)

        try:
            result = await self._run(prepared, step, window, request, inbox, parked)
        except Exception as exc:
            # The window failed (a host fault, a lost optimistic lock or lease): everyone who joined
            # it is told; requests still queued behind it get a window of their own. A request whose
            # own round was committed before the failure gets that committed state: its event is in
            # the history, and an error would make its client send it again.
            queued = {delivery.tag for delivery in inbox.pending()}
            committed = {*window.participants, *([request] if window.own_committed else [])}
            for waiting in list(self._open.get((request.machine_id, request.instance_name), ())):
                if waiting in queued:
                    continue
                if waiting in committed and window.view is not None:
                    waiting.resolve(window.view)
                elif waiting is not request:
                    waiting.fail(exc)
            if request in committed:
                log.warning("instance %s: a later round of the window failed: %s", request.instance_name, exc)
                return
            raise
        await self._finish_window(request, window, result)

    async def _upgrade(self, request: _Request, row: InstanceRow) -> InstanceRow:
        """Move a settled instance to its desired version (wire-api 7.8): describe it as state
        paths, map them through each migration of the chain, rebuild it in the new version and
        commit that as a ``statebacked.upgrade`` transition. Returns the row the event then goes to:
        upgraded, or unchanged when the upgrade failed (logged; the desired version is cleared, so
        setting it again retries)."""
        target = row.desired_version_id
        assert target is not None
        source = row.version_id
        logs: list[LogLine] = []

        async def give_up(reason: str) -> InstanceRow:
            text = f"upgrade from {source} to {target} failed, the instance stays on {source}: {reason}"
            log.info("instance %s: %s", row.name, text)
            logs.append(LogLine("stderr", "error", text, self.clock.now_ms()))
            await self._store_logs(request.org_id, request.machine_slug, row.name, source, tuple(logs))
            await self.store.set_desired_version(row.id, None)
            return row

        chain = migration_chain(await self.store.migration_edges(row.machine_id), source, target)
        if chain is None:
            return await give_up("no chain of migrations leads there")
        described = await self.executor.run(
            (await self._prepared_machine(source)).describe, row.persisted, self.clock.now_ms()
        )
        logs += described.logs
        if not described.ok or described.description is None:
            return await give_up(f"the instance could not be read as state paths: {described.error}")
        description = described.description
        for migration_id in chain:
            migrated = await self.executor.run(
                (await self._prepared_migration(migration_id)).upgrade, description, self.clock.now_ms()
            )
            logs += migrated.logs
            if not migrated.ok or migrated.description is None:
                return await give_up(f"migration {migration_id} failed: {migrated.error}")
            description = migrated.description
        cut_off = row.persisted.get("inflight") or []
        if cut_off:
            logs.append(
                LogLine(
                    "stderr",
                    "warn",
                    f"services {', '.join(cut_off)} were cut off before the upgrade; their error events "
                    "are not delivered to the new version",
                    self.clock.now_ms(),
                )
            )
        event = {
            "type": "statebacked.upgrade",
            "fromMachineVersionId": source,
            "toMachineVersionId": target,
            "migrationPath": chain,
        }
        step = StepRequest("upgrade", row.name, None, event=event, description=description, parent=row.parent)
        window = _Window(
            request, row.id, row.seq, row.ts, target, InstanceState.of(row), parent=row.parent, lease=request.lease
        )
        result = await run_window(
            await self._prepared_machine(target),
            step,
            executor=self.executor.lane(request.org_id),
            commit=lambda round_, tag: self._commit(window, round_, tag),
            transport=self.transport,
            clock=self.clock,
        )
        if not result.ok:
            logs += result.uncommitted_logs
            return await give_up(f"the new version does not accept the migrated instance: {result.error}")
        await self._store_logs(request.org_id, request.machine_slug, row.name, target, tuple(logs))
        upgraded = await self.store.find_instance(request.machine_id, request.instance_name)
        if upgraded is None:
            raise NotFound(f"instance {request.instance_name!r} not found")
        return upgraded

    async def _run(
        self,
        prepared: PreparedMachine,
        step: StepRequest,
        window: _Window,
        request: _Request,
        inbox: Inbox,
        parked: SandboxInstance | None,
    ) -> WindowResult:
        async def commit(round_: Round, tag: object) -> None:
            await self._commit(window, round_, tag)

        return await run_window(
            prepared,
            step,
            executor=self.executor.lane(request.org_id),
            commit=commit,
            transport=self.transport,
            clock=self.clock,
            tag=request,
            inbox=inbox,
            sandbox=parked,
            keep_sandbox=self.parking > 0,
        )

    async def _finish_window(self, request: _Request, window: _Window, result: WindowResult) -> None:
        for task in result.detached:
            self._detached.add(task)
            task.add_done_callback(self._detached.discard)
        if result.sandbox is not None and window.instance_id is not None:
            self._park(window.instance_id, window.seq, window.version_id, result.sandbox)
        await self._store_logs(
            request.org_id, request.machine_slug, request.instance_name, window.version_id, result.uncommitted_logs
        )
        if not result.ok:
            raise _error_for(result.outcome, result.error)
        if result.late_fault is not None:
            log.info("instance %s: a later round failed: %s", request.instance_name, result.late_fault.error)
        if window.view is None:
            raise Timeout("the settle window ended before the first transition")
        for participant in (request, *window.participants):
            participant.resolve(window.view)

    def _unpark(self, row: InstanceRow) -> SandboxInstance | None:
        """The parked sandbox of this instance, if it still holds exactly the committed state."""
        entry = self._parked.pop(row.id, None)
        if entry is None:
            return None
        self._parked_bytes -= entry.size
        if entry.seq != row.seq or entry.version_id != row.version_id:
            entry.sandbox.close()  # another process moved the instance on, or it was upgraded
            return None
        return entry.sandbox

    def _park(self, instance_id: int, seq: int, version_id: str, sandbox: SandboxInstance) -> None:
        size = sandbox.footprint()
        if self.parking_bytes and size > self.parking_bytes // 4:
            sandbox.close()  # one instance that grew its heap must not push the others out
            return
        stale = self._parked.pop(instance_id, None)
        if stale is not None:  # a window that did not take it (a recovery, a create over a stale entry)
            self._parked_bytes -= stale.size
            stale.sandbox.close()
        self._parked[instance_id] = _Parked(seq, version_id, sandbox, size)
        self._parked_bytes += size
        while len(self._parked) > self.parking or (self.parking_bytes and self._parked_bytes > self.parking_bytes):
            _, evicted = self._parked.popitem(last=False)
            self._parked_bytes -= evicted.size
            evicted.sandbox.close()

    async def _commit(self, window: _Window, round_: Round, tag: object) -> None:
        now = self.clock.now_ms()
        assert round_.persisted is not None
        transitions = []
        for t in round_.transitions:
            window.seq += 1
            window.ts = max(now, window.ts + 1)
            transitions.append(
                TransitionRecord(
                    window.seq, window.ts, t.state, t.event or {}, t.public_context, t.tags, t.done, t.context
                )
            )
        timer_ops: list[tuple[Literal["set", "cancel", "cancel_all"], Any]] = []
        for op in round_.timers:
            if op.op == "set":
                assert op.event is not None and op.delay_ms is not None
                timer_ops.append(("set", TimerSet(op.id, op.event, now + op.delay_ms, op.target)))
            elif op.op == "cancel":
                timer_ops.append(("cancel", op.id))
            else:
                timer_ops.append(("cancel_all", None))
        parent = window.parent
        if parent is not None and "invokeId" in parent and any(t.done for t in round_.transitions):
            # persistentInvocableSource: the invoking parent hears of the end, like XState's own.
            output = next(t.output for t in round_.transitions if t.done)
            event = {"type": f"done.invoke.{parent['invokeId']}", "data": output}
            back = {"machineName": parent["machineName"], "machineInstanceName": parent["machineInstanceName"]}
            timer_ops.append(("set", TimerSet(None, event, now, {**back, "kind": "done"})))
        request = window.request
        timer = tag.timer if isinstance(tag, _Request) else None
        context = round_.transitions[-1].context if round_.transitions else (window.view.context if window.view else {})
        index_values = None
        if transitions and self.index_values is not None:
            index_values = await self.index_values(window.version_id, context)
        commit = RoundCommit(
            instance_id=window.instance_id or 0,
            index_values=index_values,
            expected_seq=window.seq - len(transitions),
            persisted=round_.persisted,
            version_id=window.version_id,
            transitions=transitions,
            context=context,
            timer_ops=timer_ops,
            delete_timer_id=timer.id if timer is not None else None,
            logs=[_record(line, now) for line in round_.logs],
            org_id=request.org_id,
            machine_slug=request.machine_slug,
            instance_name=request.instance_name,
            lease=window.lease,
        )
        if window.instance_id is None:
            window.instance_id = await self.store.insert_instance(
                request.machine_id, request.instance_name, commit, now, parent=request.parent
            )
        else:
            await self.store.commit_round(commit, now)
        if transitions:
            last = transitions[-1]
            window.view = InstanceState(last.ts, last.state, last.public_context, tuple(last.tags), last.done, context)
            if self.on_commit is not None:
                for record, transition in zip(transitions, round_.transitions, strict=True):
                    view = InstanceState(
                        record.ts,
                        record.state,
                        record.public_context,
                        tuple(record.tags),
                        record.done,
                        transition.context,
                    )
                    self.on_commit(
                        Committed(
                            request.org_id,
                            request.machine_id,
                            request.machine_slug,
                            request.instance_name,
                            window.version_id,
                            view,
                            window.instance_id,
                            record.seq,
                        )
                    )
        if isinstance(tag, _Request) and tag is not request:
            window.participants.append(tag)
        elif tag is request:
            window.own_committed = True
        if timer_ops:
            self.on_timers_changed()

    async def _store_logs(
        self, org_id: str, machine_slug: str, instance_name: str, version_id: str, lines: tuple[LogLine, ...]
    ) -> None:
        if lines:
            now = self.clock.now_ms()
            try:
                await self.store.insert_logs(
                    org_id, machine_slug, instance_name, version_id, [_record(line, now) for line in lines]
                )
            except Unavailable as exc:  # a full disk must not fail a read, or a committed request
                log.warning("instance %s: %d log lines dropped: %s", instance_name, len(lines), exc)

    # -- shutdown -------------------------------------------------------------------------------------

    async def close(self, grace_s: float) -> None:
        """Stop taking requests; let open windows finish for ``grace_s``, then cut them.

        A cut window loses nothing committed: its running services are recorded as in flight and
        get their error events on the next event after the restart.
        """
        self._closing = True
        for entry in self._parked.values():
            entry.sandbox.close()
        self._parked.clear()
        self._parked_bytes = 0
        tasks: list[asyncio.Task[Any]] = [task for _, task in self._actors.values()]
        tasks += list(self._detached)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def _cache(cache: collections.OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > PREPARED_CACHE_SIZE:
        cache.popitem(last=False)


async def _never() -> bool:
    return False


def _record(line: LogLine, now: int) -> LogRecord:
    """Log lines are stamped with their commit time (the guest's clock is frozen at the step's start,
    and readers page through logs by time: wire-api 5)."""
    return LogRecord(now, line.stream, line.level, line.text)
