"""Live actors: many instances of one machine version kept live in a few shared VMs.

The pristine path (``PreparedMachine.new_instance``, ``run_window``) restores every event's instance
from its committed snapshot into a fresh sandbox: the strong-isolation setting, unchanged. An
:class:`ActorHost` instead keeps the instances of ONE prepared machine version live, as XState
interpreters (v4 ``interpret``) or actors (v5 ``createActor``), many per VM, so that a hot instance's
event is one guest entry instead of a restore. Design and measurements: docs/runtime.md ("Live
actors"), docs/decisions.md, ../shared/spec/runtime-semantics.md sections 12-14.

What it guarantees (runtime-semantics section 13, point by point):

1. **Own initial context.** Every live actor is created from its own deep copy: restored actors from
   their committed JSON snapshot, new ones from a deep copy of the machine's initial context merged
   with the caller's (harness/entry.js ``deepCopy``). An in-place mutation in one actor never reaches
   ``machine.context``, a neighbour, or an actor created later.
2. **Module-level state** (top-level ``let`` of the bundle) is per VM: it persists across the events
   of the actors of that VM and is shared by them, as it persists across the events of one parked
   sandbox. It never crosses machine versions (one host per prepared version, each VM loads only
   that version) nor orgs (a version belongs to one org). Restore-per-event (pristine) gives every
   event a fresh module scope.
3. **One entry at a time per VM** (a lock per VM, held for each guest entry, pumping included); a
   version's actors are spread over ``settings.vms`` VMs by a stable hash of the instance id, so a
   CPU-bound or hostile instance stalls only the actors of its own VM, and only until its per-call
   CPU limit.
4. **A fault discards the VM.** A limit hit (CPU, memory, stack, promise jobs, wall time), a trap or
   malformed replies discard the VM with all its actors; a JS exception of the machine (``guest_error``)
   drops only that actor. The faulting step's round says why; every other actor of the VM is reported
   by :meth:`ActorHost.take_lost` (and on :attr:`ActorStep.lost`): its next step restores from its
   committed snapshot, whose ``inflight`` list delivers the error events of services that were cut
   off (section 12: never silently lost, never re-run). An actor whose settle window was open gets a
   ``guest_error`` round from ``resume``/``fire_timers``/``deliver`` (the window's ``late_fault``).
5. **Clock and randomness per event, per instance**, as in a fresh sandbox: every entry carries the
   host's ``nowMs`` and a fresh seed; each actor has its own outbox, log lines, ephemeral timers and
   ``performance.now()`` origin (js_shims/internal/host.js scopes); a new window restarts request
   and timer ids and ``performance.now()`` as a fresh sandbox does. The differential tests check
   that a live actor and restore-per-event commit identical rounds.
6. **Memory.** Each VM's QuickJS heap is capped at ``limits.memory_bytes`` (one event's limit) plus
   ``settings.vm_memory_bytes`` (the resident actors' budget). Now and then, at the end of a
   settled window (:class:`ActorSettings` ``measure_every``, ``measure_per_actor``), the heap above
   the VM's base is measured; over budget, idle actors are evicted (the largest snapshots first
   when one stands out, then least recently used) and a :class:`MemoryPressure` names the instance
   whose window crossed the budget. Idle actors are also evicted by count
   (``max_actors_per_vm``) and by age (:meth:`ActorHost.evict_idle`).

The host never performs effects: every entry returns a :class:`~runtime.protocol.Round` for the
caller to commit before it performs the round's fetches, exactly as with a fresh sandbox.

**Sequence check.** ``step(instance_id, committed_seq, request, now_ms)``: the caller passes the seq
of the committed snapshot it holds (``request.persisted``). The live actor is used only when it
exists, its window is closed, every round it produced was confirmed with
:meth:`ActorHost.committed` and the confirmed seq equals ``committed_seq``; otherwise the actor is
rebuilt from ``request.persisted`` (``ActorStep.restored``). A refused or failed commit therefore
never leaves a live actor ahead of the database: the caller simply does not confirm it.

Every method is synchronous (milliseconds): call it through :class:`runtime.executor.Executor`.
Different VMs run in parallel on different threads; one VM's entries are serialised.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .clock import Clock
from .engine import PreparedMachine, SandboxInstance
from .engines.guest_loop import _Instance, _Prepared, _Session
from .executor import Runner
from .limits import Outcome
from .protocol import EffectResult, Round, StepRequest
from .settle import Inbox, WindowResult, drive
from .transport import Transport

__all__ = [
    "ActorCommitFn",
    "ActorHost",
    "ActorHostStats",
    "ActorSandbox",
    "ActorSettings",
    "ActorStep",
    "LiveActorHost",
    "LostActor",
    "MemoryPressure",
    "run_actor_window",
    "step_each",
]

# Outcomes that condemn the whole VM: the limit was hit somewhere in the middle of the machine's code,
# and everything co-hosted shares that heap (workerd's "isolate-level limit").
VM_FATAL = frozenset(
    {
        Outcome.EXCEEDED_CPU,
        Outcome.EXCEEDED_MEMORY,
        Outcome.EXCEEDED_STACK,
        Outcome.EXCEEDED_JOBS,
        Outcome.EXCEEDED_WALL_TIME,
    }
)

# Outcomes of a request refused before anything ran: the actor is as it was.
_REFUSED = frozenset({Outcome.DENIED, Outcome.INVALID_EVENT, Outcome.EXCEEDED_EVENT_SIZE, Outcome.CANCELED})


@dataclass(frozen=True)
class ActorSettings:
    """How an :class:`ActorHost` spreads and bounds its live actors."""

    vms: int = 4
    """VMs per machine version; an instance always lands in VM ``crc32(instance_id) % vms``."""
    max_actors_per_vm: int = 4_096
    """Live actors per VM; the least recently used idle one is evicted to make room."""
    vm_memory_bytes: int = 64 * 1024 * 1024
    """Budget of a VM's heap above its base (the machine loaded, no actor) for resident actors. The
    VM's hard QuickJS limit is ``limits.memory_bytes`` plus this, so one event still gets its own
    ``memory_bytes`` on top of a full VM."""
    measure_every: int = 64
    """Settled windows of a VM between two measurements of its heap, at least. A measurement walks
    the whole heap (about 40 us per live actor), so the interval also grows with the VM's actors
    (``measure_per_actor``); on the WASM engine a growth of linear memory by an eighth of the budget
    (an O(1) check) triggers a measurement at once."""
    measure_per_actor: float = 4.0
    """The interval is at least this many windows per live actor of the VM (0: ``measure_every`` only)."""
    idle_ms: int = 10 * 60_000
    """:meth:`ActorHost.evict_idle` drops actors whose last step is older than this."""

    def __post_init__(self) -> None:
        if self.vms < 1 or self.max_actors_per_vm < 1 or self.measure_every < 1 or self.measure_per_actor < 0:
            raise ValueError("vms, max_actors_per_vm and measure_every must be at least 1, measure_per_actor >= 0")
        if self.vm_memory_bytes < 0 or self.idle_ms < 0:
            raise ValueError("vm_memory_bytes and idle_ms must not be negative")


@dataclass(frozen=True)
class LostActor:
    """A live actor discarded with its VM because a co-hosted actor faulted (or the host closed)."""

    instance_id: str
    reason: str
    """Which instance's fault, and what it was."""
    open_window: bool
    """Its settle window was open (effects or services in flight): the caller's window for it ends
    with a ``late_fault``; its committed ``inflight`` list gets error events on the next step."""


@dataclass(frozen=True)
class MemoryPressure:
    """A VM found over its memory budget, and what was evicted for it."""

    vm: int
    heap_bytes: int
    """Heap above the VM's base when measured."""
    budget_bytes: int
    crossed_by: str
    """The instance whose step was running when the budget was found crossed."""
    largest: str | None
    """The live instance with the largest committed snapshot then (a leaking context shows here)."""
    evicted: tuple[str, ...]
    heap_after: int


@dataclass(frozen=True)
class ActorStep:
    """What :meth:`ActorHost.step` did."""

    round: Round
    restored: bool
    """The actor was (re)built from ``request.persisted`` (or created) rather than stepped live."""
    vm: int
    lost: tuple[LostActor, ...] = ()
    """Other actors discarded by this step's fault (also queued for :meth:`ActorHost.take_lost`)."""


@dataclass(frozen=True)
class ActorHostStats:
    live: int
    vms_open: int
    steps: int
    live_steps: int
    restores: int
    vm_discards: int
    evictions: int
    heap_bytes: tuple[int, ...]
    """Last measured heap above base, per open VM."""


class _ActorGuest(_Instance):
    """One live actor's side of a shared VM: the host loop of a sandbox, aimed at one slot."""

    def __init__(self, prepared: _Prepared, session: _Session, key: str) -> None:
        super().__init__(prepared, session=session)
        self._slot = {"actor": key}
        self._key = key

    def deliver_new_window(
        self, event: Mapping[str, Any], auth_context: Mapping[str, Any] | None, now_ms: int
    ) -> Round:
        """The first event of a new window on a live actor: per-event budgets and the guest's window
        state (ids, performance.now) start afresh, as in a fresh sandbox."""
        self.new_window()
        self._entries = self._host_calls = 0  # Usage counts per window, as a fresh sandbox's do
        self._slot = {"actor": self._key, "window": True}
        try:
            round_ = self.deliver(event, auth_context, now_ms)
        finally:
            self._slot = {"actor": self._key}
        if round_.outcome is Outcome.DENIED:  # worded as a fresh window's begin words it
            round_ = dataclasses.replace(round_, error="allowWrite denied the request")
        return round_

    def close(self) -> None:
        # Never closes the shared VM: the ActorHost owns it (a fault is handled there).
        self._sandbox = None


@dataclass(eq=False)
class _Actor:
    key: str
    guest: _ActorGuest
    vm: _SharedVM
    seq: int | None = None
    """The committed seq the live state is known to match; None while a round is unconfirmed."""
    persisted: Mapping[str, Any] | None = None
    pending: Mapping[str, Any] | None = None
    open_window: bool = True
    last_used_ms: int = 0


@dataclass(eq=False)
class _SharedVM:
    index: int
    session: _Session
    base_heap: int
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)
    actors: collections.OrderedDict[str, _Actor] = dataclasses.field(default_factory=collections.OrderedDict)
    steps: int = 0
    heap: int = 0
    dead: bool = False
    since_measure: int = 0
    footprint_at_measure: int = 0


class ActorHost:
    """Live actors of one prepared machine version, in ``settings.vms`` shared VMs.

    Thread-safe: any method may be called from any executor thread; entries into one VM are
    serialised by that VM's lock.
    """

    def __init__(self, prepared: PreparedMachine, settings: ActorSettings | None = None) -> None:
        if not isinstance(prepared, _Prepared):
            raise TypeError("ActorHost needs a machine prepared by one of runtime.engines' engines")
        self.prepared = prepared
        self.settings = settings or ActorSettings()
        self._vms: list[_SharedVM | None] = [None] * self.settings.vms
        self._open_lock = threading.Lock()
        self._lost: list[LostActor] = []
        self._pressure: list[MemoryPressure] = []
        self._steps = self._live_steps = self._restores = self._discards = self._evictions = 0
        self._closed = False

    # -- placement and VMs -------------------------------------------------------------------------------

    def vm_index(self, instance_id: str) -> int:
        """The VM an instance lives in (stable: a hash of its id)."""
        return zlib.crc32(instance_id.encode()) % self.settings.vms

    def _vm(self, index: int) -> _SharedVM:
        with self._open_lock:
            if self._closed:
                raise RuntimeError("the actor host is closed")
            vm = self._vms[index]
            if vm is None or vm.dead:
                limits = self.prepared.limits
                hard = dataclasses.replace(
                    limits, memory_bytes=min(limits.memory_bytes + self.settings.vm_memory_bytes, 2**32 - 1)
                )
                raw = self.prepared.open_vm(hard)
                session = _Session(raw, limits)
                if not raw.attached:
                    reply = session.call("attach", {"runtimeApi": self.prepared.runtime_api_mode})
                    if not isinstance(reply, dict) or "fault" in reply:
                        raw.close()
                        raise RuntimeError(f"the machine failed to load into a shared VM: {reply!r}")
                vm = _SharedVM(index, session, raw.heap_used())
                vm.footprint_at_measure = raw.footprint() if raw.footprint_is_cheap else 0
                self._vms[index] = vm
            return vm

    def _discard_vm(self, vm: _SharedVM, culprit: str, reason: str) -> tuple[LostActor, ...]:
        """Condemn a VM: every actor in it is lost (reported), the VM closed."""
        lost = tuple(
            LostActor(key, f"instance {culprit!r} faulted in the shared VM: {reason}", actor.open_window)
            for key, actor in vm.actors.items()
            if key != culprit
        )
        vm.actors.clear()
        vm.dead = True
        vm.session.vm.close()
        with self._open_lock:
            if self._vms[vm.index] is vm:
                self._vms[vm.index] = None
            self._lost.extend(lost)
        self._discards += 1
        return lost

    def _drop(self, vm: _SharedVM, keys: Sequence[str]) -> None:
        """Drop actors from a live VM (no stop(), no exit actions). Caller holds the VM lock."""
        present = [k for k in keys if vm.actors.pop(k, None) is not None]
        if present and not vm.dead:
            vm.session.start_entry()
            vm.session.call("drop", {"actors": present})

    # -- the caller's API ----------------------------------------------------------------------------------

    def step(self, instance_id: str, committed_seq: int | None, request: StepRequest, now_ms: int) -> ActorStep:
        """Start a settle window for an instance: deliver ``request`` to its live actor when that
        actor matches ``committed_seq``, else (re)build the actor from ``request`` (create, restore,
        or event on ``request.persisted``). Returns the first round; continue the window with
        :meth:`resume` / :meth:`fire_timers` / :meth:`deliver`, confirm each committed round with
        :meth:`committed`, and end it with :meth:`end_window`."""
        index = self.vm_index(instance_id)
        vm = self._vm(index)
        with vm.lock:
            if vm.dead:  # condemned between lookup and lock: take the new one
                return self.step(instance_id, committed_seq, request, now_ms)
            self._steps += 1
            vm.steps += 1
            actor = vm.actors.get(instance_id)
            live = (
                actor is not None
                and request.kind == "event"
                and request.event is not None
                and not actor.open_window
                and actor.seq is not None
                and actor.seq == committed_seq
            )
            if live:
                assert actor is not None and request.event is not None
                actor.open_window = True
                actor.last_used_ms = now_ms
                vm.actors.move_to_end(instance_id)
                round_ = actor.guest.deliver_new_window(request.event, request.auth_context, now_ms)
                self._live_steps += 1
            else:
                if actor is not None:
                    self._drop(vm, [instance_id])
                self._make_room(vm)
                guest = _ActorGuest(self.prepared, vm.session, instance_id)
                actor = _Actor(instance_id, guest, vm, last_used_ms=now_ms)
                vm.actors[instance_id] = actor
                round_ = guest.begin(request, now_ms)
                self._restores += 1
                if round_.outcome is Outcome.DENIED or round_.outcome in (
                    Outcome.INVALID_EVENT,
                    Outcome.EXCEEDED_EVENT_SIZE,
                ):
                    # Nothing was built (or it was refused before running): keep no actor.
                    self._drop(vm, [instance_id])
                    return ActorStep(round_, True, index)
            lost = self._after(vm, actor, round_, instance_id)
            return ActorStep(round_, not live, index, lost)

    def deliver(
        self, instance_id: str, event: Mapping[str, Any], auth_context: Mapping[str, Any] | None, now_ms: int
    ) -> Round:
        """An event joining the instance's open window (runtime.settle's inbox)."""
        return self._continue(instance_id, now_ms, lambda g: g.deliver(event, auth_context, now_ms))

    def resume(self, instance_id: str, results: Sequence[EffectResult], now_ms: int) -> Round:
        """Feed effect results (fetch responses) of the open window back to the actor."""
        return self._continue(instance_id, now_ms, lambda g: g.resume(results, now_ms))

    def fire_timers(self, instance_id: str, now_ms: int) -> Round:
        """Run the actor's ephemeral timers due at ``now_ms`` (inside its open window)."""
        return self._continue(instance_id, now_ms, lambda g: g.fire_timers(now_ms))

    def committed(self, instance_id: str, seq: int) -> None:
        """The caller committed the actor's latest round as ``seq``: the live state matches it."""
        vm = self._vms[self.vm_index(instance_id)]
        if vm is None:
            return
        with vm.lock:
            actor = vm.actors.get(instance_id)
            if actor is not None:
                actor.seq = seq
                actor.persisted = actor.pending

    def end_window(self, instance_id: str, keep: bool) -> bool:
        """The instance's window ended. ``keep`` (the window was quiescent: nothing pending, no
        service running) keeps the actor live if all its rounds were confirmed; otherwise it is
        dropped and the next step restores it. Returns whether it stays live."""
        vm = self._vms[self.vm_index(instance_id)]
        if vm is None:
            return False
        with vm.lock:
            actor = vm.actors.get(instance_id)
            if actor is None:
                return False
            if keep and actor.seq is not None and not vm.dead:
                actor.open_window = False
                # Measured once the actor is idle, so that it can be evicted itself if it is the one
                # that grew (runtime-semantics 13.6).
                self._maybe_measure(vm, instance_id)
                return instance_id in vm.actors
            self._drop(vm, [instance_id])
            return False

    def end_window_now(self, instance_id: str, keep: bool) -> bool:
        """:meth:`end_window` for the common case, cheap enough for the caller's own thread (the
        event loop): a quiescent window whose actor stays live and whose VM needs no heap
        measurement now. Returns False, having done nothing, when it would wait for the VM's lock,
        drop the actor (a guest call) or measure: call :meth:`end_window` on a worker then."""
        vm = self._vms[self.vm_index(instance_id)]
        if vm is None or not keep:
            return False
        if not vm.lock.acquire(blocking=False):
            return False
        try:
            actor = vm.actors.get(instance_id)
            if actor is None or actor.seq is None or vm.dead:
                return False
            settings = self.settings
            raw = vm.session.vm
            interval = max(settings.measure_every, int(settings.measure_per_actor * len(vm.actors)))
            grown = raw.footprint_is_cheap and raw.footprint() > vm.footprint_at_measure + settings.vm_memory_bytes // 8
            if vm.since_measure + 1 >= interval or grown:
                return False
            vm.since_measure += 1
            actor.open_window = False
            return True
        finally:
            vm.lock.release()

    def evict(self, instance_ids: Sequence[str]) -> int:
        """Drop these instances' live actors (idle or not: an open window of one gets a fault on
        its next entry). Returns how many were live."""
        count = 0
        for instance_id in instance_ids:
            vm = self._vms[self.vm_index(instance_id)]
            if vm is None:
                continue
            with vm.lock:
                if instance_id in vm.actors:
                    self._drop(vm, [instance_id])
                    count += 1
        self._evictions += count
        return count

    def evict_idle(self, now_ms: int) -> list[str]:
        """Drop actors whose window is closed and whose last step is ``settings.idle_ms`` old."""
        evicted: list[str] = []
        for vm in list(self._vms):
            if vm is None:
                continue
            with vm.lock:
                old = [
                    k
                    for k, a in vm.actors.items()
                    if not a.open_window and now_ms - a.last_used_ms >= self.settings.idle_ms
                ]
                self._drop(vm, old)
                evicted.extend(old)
        self._evictions += len(evicted)
        return evicted

    def take_lost(self) -> list[LostActor]:
        """Actors discarded with a faulted VM since the last call (the caller restores them: their
        next step rebuilds them from the committed snapshot; a ``recover`` step delivers their cut-off
        services' error events at once)."""
        with self._open_lock:
            lost, self._lost = self._lost, []
        return lost

    @property
    def lost_actors(self) -> tuple[LostActor, ...]:
        """Actors lost since the last :meth:`take_lost`, without taking them."""
        with self._open_lock:
            return tuple(self._lost)

    def take_memory_pressure(self) -> list[MemoryPressure]:
        with self._open_lock:
            events, self._pressure = self._pressure, []
        return events

    def is_live(self, instance_id: str) -> bool:
        vm = self._vms[self.vm_index(instance_id)]
        return vm is not None and not vm.dead and instance_id in vm.actors

    def live_ids(self) -> list[str]:
        return [k for vm in self._vms if vm is not None and not vm.dead for k in vm.actors]

    def measure(self) -> tuple[int, ...]:
        """Measure every open VM's heap above its base now (walks each heap)."""
        out = []
        for vm in list(self._vms):
            if vm is None or vm.dead:
                continue
            with vm.lock:
                vm.heap = max(0, vm.session.vm.heap_used() - vm.base_heap)
                out.append(vm.heap)
        return tuple(out)

    def stats(self) -> ActorHostStats:
        vms = [vm for vm in self._vms if vm is not None and not vm.dead]
        return ActorHostStats(
            live=sum(len(vm.actors) for vm in vms),
            vms_open=len(vms),
            steps=self._steps,
            live_steps=self._live_steps,
            restores=self._restores,
            vm_discards=self._discards,
            evictions=self._evictions,
            heap_bytes=tuple(vm.heap for vm in vms),
        )

    def footprint(self) -> int:
        """Bytes the open VMs hold (their footprints: an upper bound of resident memory)."""
        return sum(vm.session.vm.footprint() for vm in self._vms if vm is not None and not vm.dead)

    def close(self) -> None:
        """Close every VM. Live actors are simply gone (their state is committed)."""
        with self._open_lock:
            self._closed = True
            vms, self._vms = self._vms, [None] * self.settings.vms
        for vm in vms:
            if vm is not None:
                with vm.lock:
                    vm.actors.clear()
                    vm.dead = True
                    vm.session.vm.close()

    def sandbox(self, instance_id: str) -> SandboxInstance:
        """The instance's open window as a :class:`SandboxInstance` (for ``runtime.settle.drive``)."""
        return ActorSandbox(self, instance_id)

    # -- internals -----------------------------------------------------------------------------------------

    def _continue(self, instance_id: str, now_ms: int, entry: Callable[[_ActorGuest], Round]) -> Round:
        index = self.vm_index(instance_id)
        vm = self._vms[index]
        missing = Round(
            Outcome.GUEST_ERROR,
            error=f"the live actor of {instance_id!r} is gone (its VM was discarded or it was evicted); "
            "the instance stays at its last committed round",
        )
        if vm is None:
            return missing
        with vm.lock:
            actor = vm.actors.get(instance_id)
            if vm.dead or actor is None or not actor.open_window:
                return missing
            actor.last_used_ms = max(actor.last_used_ms, now_ms)
            round_ = entry(actor.guest)
            self._after(vm, actor, round_, instance_id)
            return round_

    def _after(self, vm: _SharedVM, actor: _Actor, round_: Round, instance_id: str) -> tuple[LostActor, ...]:
        """Bookkeeping after one entry of ``actor``. Caller holds the VM lock."""
        if round_.ok:
            changed = bool(round_.transitions or round_.timers or round_.logs) or round_.persisted != actor.persisted
            if changed:
                actor.seq = None  # ahead of the database until the caller confirms the commit
                actor.pending = round_.persisted
            return ()
        if round_.outcome in _REFUSED:
            return ()  # refused before anything ran: the actor is as it was
        if round_.outcome in VM_FATAL or actor.guest.vm_suspect or not vm.session.vm.alive:
            return self._discard_vm(vm, instance_id, round_.error or round_.outcome.value)
        self._drop(vm, [instance_id])  # a JS exception: only this actor's state is in doubt
        return ()

    def _make_room(self, vm: _SharedVM) -> None:
        excess = len(vm.actors) + 1 - self.settings.max_actors_per_vm
        if excess <= 0:
            return
        idle = [k for k, a in vm.actors.items() if not a.open_window][:excess]
        self._drop(vm, idle)
        self._evictions += len(idle)

    def _maybe_measure(self, vm: _SharedVM, instance_id: str) -> None:
        settings = self.settings
        vm.since_measure += 1
        raw = vm.session.vm
        interval = max(settings.measure_every, int(settings.measure_per_actor * len(vm.actors)))
        grown = raw.footprint_is_cheap and raw.footprint() > vm.footprint_at_measure + settings.vm_memory_bytes // 8
        if vm.since_measure < interval and not grown:
            return
        vm.since_measure = 0
        vm.footprint_at_measure = raw.footprint() if raw.footprint_is_cheap else 0
        vm.heap = max(0, raw.heap_used() - vm.base_heap)
        budget = self.settings.vm_memory_bytes
        if vm.heap <= budget:
            return
        heap = vm.heap
        sizes = {k: len(json.dumps(a.persisted, separators=(",", ":"))) for k, a in vm.actors.items()}
        largest = max(sizes, key=sizes.__getitem__, default=None)
        idle = [k for k, a in vm.actors.items() if not a.open_window]  # least recently used first
        median = sorted(sizes.values())[len(sizes) // 2] if sizes else 0
        outliers = sorted((k for k in idle if sizes[k] > 4 * max(median, 1024)), key=lambda k: -sizes[k])
        order = outliers + [k for k in idle if k not in set(outliers)]
        # Evict enough to come back under three quarters of the budget, at the average actor's size
        # (the outliers counted at their snapshot's share of the heap).
        per_actor = heap / max(len(vm.actors), 1)
        target = heap - 0.75 * budget
        evicted: list[str] = []
        freed = 0.0
        total_size = sum(sizes.values()) or 1
        for key in order:
            if freed >= target:
                break
            evicted.append(key)
            freed += max(per_actor, heap * sizes[key] / total_size)
        self._drop(vm, evicted)
        vm.session.vm.collect_garbage()
        vm.heap = max(0, vm.session.vm.heap_used() - vm.base_heap)
        self._evictions += len(evicted)
        event = MemoryPressure(vm.index, heap, budget, instance_id, largest, tuple(evicted), vm.heap)
        with self._open_lock:
            self._pressure.append(event)

    def step_many(
        self, steps: Sequence[tuple[str, int | None, StepRequest]], clock: Clock
    ) -> list[ActorStep | Exception]:
        """:meth:`step` for several instances in one call (one executor hop for a batch of due
        timers): per entry (instance id, committed seq, request), its step, or the exception
        :meth:`step` raised (one instance's host fault does not stop the others). Each step takes
        the clock when it runs."""
        return step_each(self, steps, clock)


class ActorSandbox(SandboxInstance):
    """An instance's open window on a live-actor host (in process, or a worker process's), in the
    shape ``runtime.settle.drive`` drives."""

    def __init__(self, host: LiveActorHost, instance_id: str) -> None:
        self._host = host
        self._id = instance_id

    def begin(self, request: StepRequest, now_ms: int) -> Round:
        raise TypeError("start an actor's window with the host's step")

    def new_window(self) -> None:
        pass

    def deliver(self, event: Mapping[str, Any], auth_context: Mapping[str, Any] | None, now_ms: int) -> Round:
        return self._host.deliver(self._id, event, auth_context, now_ms)

    def resume(self, results: Sequence[EffectResult], now_ms: int) -> Round:
        return self._host.resume(self._id, results, now_ms)

    def fire_timers(self, now_ms: int) -> Round:
        return self._host.fire_timers(self._id, now_ms)

    def footprint(self) -> int:
        return 0

    def close(self) -> None:
        pass


class LiveActorHost(Protocol):
    """What the server and :func:`run_actor_window` call on a host of live actors: an
    :class:`ActorHost` (in this process) or a :class:`runtime.workers.WorkerActorHost` (in worker
    processes; any call may also raise the retryable :class:`runtime.workers.WorkerLost`)."""

    @property
    def prepared(self) -> PreparedMachine: ...

    def step(self, instance_id: str, committed_seq: int | None, request: StepRequest, now_ms: int) -> ActorStep: ...

    def deliver(
        self, instance_id: str, event: Mapping[str, Any], auth_context: Mapping[str, Any] | None, now_ms: int
    ) -> Round: ...

    def resume(self, instance_id: str, results: Sequence[EffectResult], now_ms: int) -> Round: ...

    def fire_timers(self, instance_id: str, now_ms: int) -> Round: ...

    def committed(self, instance_id: str, seq: int) -> None: ...

    def end_window(self, instance_id: str, keep: bool) -> bool: ...

    def end_window_now(self, instance_id: str, keep: bool) -> bool: ...

    def step_many(
        self, steps: Sequence[tuple[str, int | None, StepRequest]], clock: Clock
    ) -> list[ActorStep | Exception]: ...

    def vm_index(self, instance_id: str) -> int: ...

    def evict(self, instance_ids: Sequence[str]) -> int: ...

    def evict_idle(self, now_ms: int) -> list[str]: ...

    def take_lost(self) -> list[LostActor]: ...

    def take_memory_pressure(self) -> list[MemoryPressure]: ...

    def is_live(self, instance_id: str) -> bool: ...

    def live_ids(self) -> list[str]: ...

    def stats(self) -> ActorHostStats: ...

    def close(self) -> None: ...

    def sandbox(self, instance_id: str) -> SandboxInstance: ...


def step_each(
    host: LiveActorHost, steps: Sequence[tuple[str, int | None, StepRequest]], clock: Clock
) -> list[ActorStep | Exception]:
    """``host.step`` for each entry in turn, the clock taken as each runs; an entry whose step
    raised gets its exception (one instance's fault does not stop the others)."""
    out: list[ActorStep | Exception] = []
    for instance_id, committed_seq, request in steps:
        try:
            out.append(host.step(instance_id, committed_seq, request, clock.now_ms()))
        except Exception as exc:
            out.append(exc)
    return out


ActorCommitFn = Callable[[Round, object], Awaitable[int]]
"""Commit one round durably and return the seq it was committed as (the instance row's new seq)."""


async def run_actor_window(
    host: LiveActorHost,
    instance_id: str,
    committed_seq: int | None,
    request: StepRequest,
    *,
    executor: Runner,
    commit: ActorCommitFn,
    transport: Transport,
    clock: Clock,
    tag: object = None,
    inbox: Inbox | None = None,
) -> tuple[WindowResult, ActorStep]:
    """One settle window of an instance on a live actor: ``runtime.settle.run_window`` for an
    :class:`ActorHost`. Each round is committed (``commit`` returns its seq, which confirms the live
    actor) before its effects run; the actor stays live only if the window ends quiescent."""
    step = await executor.run(host.step, instance_id, committed_seq, request, clock.now_ms())

    async def confirm(round_: Round, round_tag: object) -> None:
        seq = await commit(round_, round_tag)
        host.committed(instance_id, seq)

    keep = False
    try:
        result = await drive(
            host.sandbox(instance_id),
            step.round,
            executor=executor,
            commit=confirm,
            transport=transport,
            clock=clock,
            limits=host.prepared.limits,
            last_persisted=request.persisted,
            tag=tag,
            inbox=inbox,
        )
        # A refused event (denied, invalid) ran nothing: the live actor is as it was.
        keep = (result.ok and result.quiescent) or step.round.outcome in _REFUSED
        return result, step
    finally:
        if (step.round.ok or host.is_live(instance_id)) and not host.end_window_now(instance_id, keep):
            await executor.run(host.end_window, instance_id, keep)
