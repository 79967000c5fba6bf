"""Live actors (runtime/actors.py): many instances of one machine version live in shared VMs.

Every test runs on both engines (the ``engine`` fixture) and, where a machine is involved, both
XState majors. The pitfalls of runtime-semantics section 13 each have a test here:

1. shared initial context: ``test_initial_context_is_copied_per_actor``
2. module-level state: ``test_module_state_is_per_vm_and_never_crosses_versions``
3. one event at a time per VM: ``test_hostile_actor_stalls_only_its_own_vm``
4. a fault discards the VM: ``test_hostile_actor_discards_only_its_vm`` (+ in-flight services:
   ``test_lost_actor_with_a_service_in_flight_gets_its_error_event``)
5. clock and randomness per event: ``test_live_actors_match_restore_per_event`` (every fixture) and
   ``test_clock_and_randomness_match_restore``
6. memory: ``test_memory_pressure_names_and_evicts_the_leaking_actor`` and the count/age evictions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from runtime import (
    ActorHost,
    ActorSettings,
    ActorStep,
    Limits,
    Outcome,
    PreparedMachine,
    Round,
    StepRequest,
    run_actor_window,
)
from runtime.local import LocalInstance
from tests.runtime import test_settle
from tests.runtime.test_settle import loader
from tests.scenarios import DEFAULT_AUTH, all_fixtures, bundle_fixture
from tests.support import prepare

FIXTURES = all_fixtures()
AUTH = {"userId": "u1"}


def deterministic(prepared: PreparedMachine, label: str) -> PreparedMachine:
    """Seed the machine's sandboxes from a counter instead of os.urandom, so that two runs that make
    the same entries in the same order see the same Math.random / crypto values."""
    counter = itertools.count()

    def entropy(n: int) -> bytes:
        return hashlib.sha256(f"{label}:{next(counter)}".encode()).digest()[:n]

    prepared.entropy = entropy  # type: ignore[attr-defined]
    return prepared


@dataclass
class ActorLocal(LocalInstance):
    """LocalInstance (the in-memory host contract) whose windows run on an ActorHost, with a seq that
    the commit returns, as the server's instance row will."""

    host: ActorHost | None = None
    seq: int = 0
    steps: list[ActorStep] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)

    async def _window(self, request: StepRequest):  # type: ignore[no-untyped-def]
        assert self.host is not None

        async def commit(round_: Round, tag: object) -> int:
            await self._commit(round_, tag)
            self.seq += 1
            return self.seq

        result, step = await run_actor_window(
            self.host,
            self.name,
            self.seq if self.persisted is not None else None,
            request,
            executor=self.executor,
            commit=commit,
            transport=self.transport,
            clock=self.clock,
        )
        self.steps.append(step)
        self.logs.extend(result.uncommitted_logs)
        self.detached.extend(result.detached)
        return result

    async def _commit(self, round_: Round, tag: object = None) -> None:
        self.rounds.append(round_)
        await super()._commit(round_, tag)


@dataclass
class PristineLocal(LocalInstance):
    """The reference: restore per event in a fresh sandbox (runtime.run_window), rounds recorded."""

    rounds: list[Round] = field(default_factory=list)

    async def _commit(self, round_: Round, tag: object = None) -> None:
        self.rounds.append(round_)
        await super()._commit(round_, tag)


def comparable(round_: Round) -> Round:
    """A round without its usage counters (promise jobs differ between a restore and a live send:
    accounting, not history)."""
    return dataclasses.replace(round_, usage=dataclasses.replace(round_.usage, jobs=0, entries=0, host_calls=0))


async def _play(instances: list[LocalInstance], steps: list[dict[str, Any]], clock) -> list[list[Any]]:
    """Every instance takes scenario step k before any takes step k + 1 (interleaved on one VM)."""
    out: list[list[Any]] = [[] for _ in instances]
    for step in steps:
        for n, inst in enumerate(instances):
            auth = step.get("authContext", DEFAULT_AUTH)
            if "create" in step:
                create = step["create"]
                result = await inst.create(create.get("context"), create.get("authContext", DEFAULT_AUTH))
                out[n].append((result.outcome, result.error))
            elif "event" in step:
                result = await inst.send(step["event"], auth)
                out[n].append((result.outcome, result.error))
            elif "advance" in step:
                windows = await inst.advance_to(clock.now_ms() + int(step["advance"]), clock.set)
                out[n].append([(w.outcome, w.error) for w in windows])
            elif "read" in step:
                decision = await inst.read(step["read"].get("authContext", DEFAULT_AUTH))
                out[n].append(decision.allowed)
    return out


# ---- pitfall 5: the same event program, live vs restore-per-event --------------------------------------


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.id)
async def test_live_actors_match_restore_per_event(fixture, bundler, engine, executor, transport, stub_url):
    """Three instances of a fixture machine, their scenario steps interleaved: restore-per-event in a
    fresh sandbox (today's path), live actors sharing one VM, and an actor host with room for one
    actor (every event restores into the shared VM) commit identical rounds and snapshots."""
    from runtime import FakeClock

    bundle = bundle_fixture(bundler, fixture)
    scenario = fixture.load_scenario(stub_url)
    names = ["inst-a", "inst-b", "inst-c"]
    runs: dict[str, tuple[list[LocalInstance], list[list[Any]]]] = {}
    hosts = []
    for mode in ("pristine", "live", "cramped"):
        clock = FakeClock()
        prepared = deterministic(engine.prepare(bundle), "seed")
        instances: list[LocalInstance] = []
        if mode == "pristine":
            instances = [PristineLocal(prepared, executor, transport, clock, name=n) for n in names]
        else:
            settings = ActorSettings(vms=1, max_actors_per_vm=1 if mode == "cramped" else 64)
            host = ActorHost(prepared, settings)
            hosts.append(host)
            instances = [ActorLocal(prepared, executor, transport, clock, name=n, host=host) for n in names]
        outcomes = await _play(instances, scenario["steps"], clock)
        runs[mode] = (instances, outcomes)
    try:
        pristine, live, cramped = runs["pristine"], runs["live"], runs["cramped"]
        assert live[1] == pristine[1] and cramped[1] == pristine[1]
        for ref, a, b in zip(pristine[0], live[0], cramped[0], strict=True):
            assert ref.rounds, "the scenario committed nothing"
            assert [comparable(r) for r in a.rounds] == [comparable(r) for r in ref.rounds]  # type: ignore[attr-defined]
            assert [comparable(r) for r in b.rounds] == [comparable(r) for r in ref.rounds]  # type: ignore[attr-defined]
            assert a.persisted == ref.persisted and a.timers == ref.timers and a.outbox == ref.outbox
        live_steps = [s for inst in live[0] for s in inst.steps]  # type: ignore[attr-defined]
        cramped_steps = [s for inst in cramped[0] for s in inst.steps]  # type: ignore[attr-defined]
        # The live run really stepped live actors (beyond the creations), the cramped one never did.
        if sum("event" in step for step in scenario["steps"]) >= 2:
            assert sum(not s.restored for s in live_steps) >= len(names)
        assert sum(s.restored for s in cramped_steps) > sum(s.restored for s in live_steps)
    finally:
        for host in hosts:
            host.close()


CLOCK_RANDOM = {
    4: """
export default createMachine({
  id: "entropy", predictableActionArguments: true, initial: "idle",
  context: { public: { draws: [] } },
  states: { idle: { on: { draw: { actions: assign({ public: (c) => ({ draws: [...c.public.draws, {
    random: Math.random(), now: Date.now(), date: new Date().toISOString(), perf: performance.now(),
    uuid: crypto.randomUUID(), timer: (() => { const t = setTimeout(() => {}, 0); clearTimeout(t); return t; })() }] }) }) } } } },
});
""",
    5: """
export default createMachine({
  id: "entropy", initial: "idle",
  context: { public: { draws: [] } },
  states: { idle: { on: { draw: { actions: assign({ public: ({ context }) => ({ draws: [...context.public.draws, {
    random: Math.random(), now: Date.now(), date: new Date().toISOString(), perf: performance.now(),
    uuid: crypto.randomUUID(), timer: (() => { const t = setTimeout(() => {}, 0); clearTimeout(t); return t; })() }] }) }) } } } },
});
""",
}


@pytest.mark.parametrize("major", [4, 5])
async def test_clock_and_randomness_match_restore(major, bundler, engine, executor, transport):
    """Math.random, crypto, Date, performance.now and timer ids seen by a live actor equal what
    restore-per-event sees for the same seeds and clock: per event, per instance."""
    from runtime import FakeClock

    results = {}
    for mode in ("pristine", "live"):
        clock = FakeClock()
        prepared = deterministic(prepare(bundler, engine, CLOCK_RANDOM[major], major), "entropy")
        host = ActorHost(prepared, ActorSettings(vms=1)) if mode == "live" else None
        insts = [
            ActorLocal(prepared, executor, transport, clock, name=f"e{i}", host=host)
            if host
            else PristineLocal(prepared, executor, transport, clock, name=f"e{i}")
            for i in range(2)
        ]
        for inst in insts:
            await inst.create(None, AUTH)
        for _ in range(3):
            clock.advance(1234)
            for inst in insts:
                await inst.send("draw", AUTH)
        results[mode] = [inst.persisted for inst in insts]
        if host is not None:
            assert sum(not s.restored for inst in insts for s in inst.steps) == 6  # type: ignore[attr-defined]
            host.close()
    assert results["live"] == results["pristine"]
    draws = results["live"][0]["xstate"]["context"]["public"]["draws"]
    assert len(draws) == 3 and len({d["random"] for d in draws}) == 3
    assert draws[0]["perf"] == 0 and draws[0]["timer"] == 1  # a fresh window each event


# ---- pitfall 1: shared initial context -----------------------------------------------------------------

MUTATING = {
    4: """
export default createMachine({
  id: "mut", predictableActionArguments: true, initial: "idle",
  context: { public: { items: [], peeks: 0 }, nested: { deep: { list: [1] } } },
  states: { idle: { on: {
    add: { actions: (ctx) => { ctx.public.items.push("x"); ctx.nested.deep.list.push(2); } },
    peek: { actions: assign({ public: (ctx) => ({ ...ctx.public, peeks: ctx.public.peeks + 1 }) }) },
  } } },
});
""",
    5: """
export default createMachine({
  id: "mut", initial: "idle",
  context: { public: { items: [], peeks: 0 }, nested: { deep: { list: [1] } } },
  states: { idle: { on: {
    add: { actions: ({ context }) => { context.public.items.push("x"); context.nested.deep.list.push(2); } },
    peek: { actions: assign({ public: ({ context }) => ({ ...context.public, peeks: context.public.peeks + 1 }) }) },
  } } },
});
""",
}


def _ok(step: ActorStep) -> Round:
    assert step.round.ok, step.round.error
    return step.round


class Driver:
    """Steps instances on a host by hand: every round committed (seq + 1) and each window closed."""

    def __init__(self, host: ActorHost) -> None:
        self.host = host
        self.seq: dict[str, int] = {}
        self.persisted: dict[str, Any] = {}
        self.now = 1_000

    def create(self, name: str, context: dict[str, Any] | None = None) -> ActorStep:
        return self._run(name, StepRequest("create", name, AUTH, context=context))

    def send(self, name: str, event: str | dict[str, Any], keep: bool = True) -> ActorStep:
        body = {"type": event} if isinstance(event, str) else event
        return self._run(name, StepRequest("event", name, AUTH, persisted=self.persisted[name], event=body), keep)

    def _run(self, name: str, request: StepRequest, keep: bool = True) -> ActorStep:
        self.now += 10
        step = self.host.step(name, self.seq.get(name), request, self.now)
        if step.round.ok and step.round.persisted is not None:
            self.seq[name] = self.seq.get(name, 0) + 1
            self.persisted[name] = step.round.persisted
            self.host.committed(name, self.seq[name])
        if step.round.ok and keep:
            self.host.end_window(name, not step.round.effects and not step.round.inflight)
        return step

    def context(self, step: ActorStep) -> Any:
        return step.round.transitions[-1].context if step.round.transitions else None


@pytest.mark.parametrize("major", [4, 5])
async def test_initial_context_is_copied_per_actor(major, bundler, engine):
    """An action that mutates the context in place in one live actor is invisible to a neighbour
    created before it, to actors created after it, and to the machine's own initial context."""
    prepared = prepare(bundler, engine, MUTATING[major], major)
    host = ActorHost(prepared, ActorSettings(vms=1))
    d = Driver(host)
    try:
        _ok(d.create("a"))
        _ok(d.create("b"))
        for _ in range(2):
            assert _ok(d.send("a", "add")).persisted is not None
        a_ctx = d.persisted["a"]["xstate"]["context"]
        assert a_ctx["public"]["items"] == ["x", "x"] and a_ctx["nested"]["deep"]["list"] == [1, 2, 2]
        b = _ok(d.send("b", "peek"))
        assert d.context(d_step := d.send("b", "peek")) is not None and d_step.restored is False
        assert b.transitions[-1].context == {"public": {"items": [], "peeks": 1}, "nested": {"deep": {"list": [1]}}}
        c = _ok(d.create("c"))
        assert c.transitions[-1].context["public"]["items"] == [] and c.transitions[-1].context["nested"] == {
            "deep": {"list": [1]}
        }
        with_ctx = _ok(d.create("d", {"public": {"items": ["mine"], "peeks": 0}}))
        assert with_ctx.transitions[-1].context["public"]["items"] == ["mine"]
        assert with_ctx.transitions[-1].context["nested"] == {"deep": {"list": [1]}}
        _ok(d.send("d", "add"))
        e = _ok(d.create("e"))
        assert e.transitions[-1].context["nested"] == {"deep": {"list": [1]}}
        assert all(host.is_live(n) for n in "abcde")
    finally:
        host.close()


# ---- pitfall 2: module-level state ---------------------------------------------------------------------

MODULE_STATE = {
    4: """
let hits = 0;
export default createMachine({
  id: "mod", predictableActionArguments: true, initial: "idle", context: { public: { hits: 0 } },
  states: { idle: { on: { hit: { actions: assign({ public: () => ({ hits: ++hits }) }) } } } },
});
""",
    5: """
let hits = 0;
export default createMachine({
  id: "mod", initial: "idle", context: { public: { hits: 0 } },
  states: { idle: { on: { hit: { actions: assign({ public: () => ({ hits: ++hits }) }) } } } },
});
""",
}


def _hits(step: ActorStep) -> int:
    return int(_ok(step).transitions[-1].public_context["hits"])


def _ids_on(host: ActorHost, vm: int, count: int, prefix: str = "i") -> list[str]:
    out = [f"{prefix}{n}" for n in range(10_000) if host.vm_index(f"{prefix}{n}") == vm]
    return out[:count]


@pytest.mark.parametrize("major", [4, 5])
async def test_module_state_is_per_vm_and_never_crosses_versions(major, bundler, engine, executor, transport, clock):
    """Stated semantics: a bundle's top-level state is shared by the live actors of one VM and
    persists across their events; actors of another VM, another version's host, and restore-per-event
    (a fresh module scope each event) never see it."""
    prepared = prepare(bundler, engine, MODULE_STATE[major], major)
    other_version = prepare(bundler, engine, MODULE_STATE[major].replace('id: "mod"', 'id: "mod2"'), major)
    host = ActorHost(prepared, ActorSettings(vms=2))
    other = ActorHost(other_version, ActorSettings(vms=2))
    try:
        d, o = Driver(host), Driver(other)
        a, b = _ids_on(host, 0, 2)
        (c,) = _ids_on(host, 1, 1)
        for name in (a, b, c):
            _ok(d.create(name))
        assert [_hits(d.send(a, "hit")), _hits(d.send(b, "hit")), _hits(d.send(a, "hit"))] == [1, 2, 3]
        assert _hits(d.send(c, "hit")) == 1  # another VM: its own module scope
        _ok(o.create(a))
        assert _hits(o.send(a, "hit")) == 1  # another version: another VM altogether
        pristine = PristineLocal(prepared, executor, transport, clock, name="p")
        await pristine.create(None, AUTH)
        for _ in range(2):
            await pristine.send("hit", AUTH)
            assert pristine.current is not None and pristine.current.public_context["hits"] == 1
    finally:
        host.close()
        other.close()


# ---- pitfalls 3 and 4: hostile actors ------------------------------------------------------------------

HOSTILE = {
    4: """
export default createMachine({
  id: "hostile", predictableActionArguments: true, initial: "idle", context: { public: { n: 0 } },
  states: { idle: { on: {
    ping: { actions: assign({ public: (c) => ({ n: c.public.n + 1 }) }) },
    spin: { actions: () => { for (;;) {} } },
    bomb: { actions: () => { const a = []; for (;;) a.push(new Array(1e5).fill(7)); } },
    oops: { actions: () => { throw new Error("action exploded"); } },
  } } },
});
""",
    5: """
export default createMachine({
  id: "hostile", initial: "idle", context: { public: { n: 0 } },
  states: { idle: { on: {
    ping: { actions: assign({ public: ({ context }) => ({ n: context.public.n + 1 }) }) },
    spin: { actions: () => { for (;;) {} } },
    bomb: { actions: () => { const a = []; for (;;) a.push(new Array(1e5).fill(7)); } },
    oops: { actions: () => { throw new Error("action exploded"); } },
  } } },
});
""",
}
SMALL = Limits(memory_bytes=32 * 2**20, cpu_ms=400)


def _n(step: ActorStep) -> int:
    return int(_ok(step).transitions[-1].public_context["n"])


@pytest.mark.parametrize("major", [4, 5])
@pytest.mark.parametrize(("event", "outcome"), [("spin", Outcome.EXCEEDED_CPU), ("bomb", Outcome.EXCEEDED_MEMORY)])
async def test_hostile_actor_discards_only_its_vm(major, event, outcome, bundler, engine):
    """An infinite loop or a memory bomb hits its per-event limit, discards its own VM (its neighbours
    there are reported lost and restore from their committed snapshots) and leaves other VMs alone."""
    prepared = prepare(bundler, engine, HOSTILE[major], major, SMALL)
    host = ActorHost(prepared, ActorSettings(vms=2, vm_memory_bytes=8 * 2**20))
    d = Driver(host)
    try:
        bad, near = _ids_on(host, 0, 2)
        far = _ids_on(host, 1, 1)[0]
        for name in (bad, near, far):
            _ok(d.create(name))
            assert _n(d.send(name, "ping")) == 1
        hit = d.send(bad, event)
        assert hit.round.outcome is outcome and hit.round.error and hit.round.error.count("=") == 1
        assert [lost.instance_id for lost in hit.lost] == [near]
        assert [lost.instance_id for lost in host.take_lost()] == [near] and host.take_lost() == []
        assert not host.is_live(bad) and not host.is_live(near) and host.is_live(far)
        again = d.send(far, "ping")
        assert _n(again) == 2 and again.restored is False  # untouched, still live
        back = d.send(near, "ping")
        assert _n(back) == 2 and back.restored is True  # rebuilt from its committed snapshot
        assert _n(d.send(bad, "ping")) == 2  # the hostile instance itself kept its last good state
        assert host.stats().vm_discards == 1
    finally:
        host.close()


@pytest.mark.parametrize("major", [4, 5])
async def test_guest_error_drops_only_that_actor(major, bundler, engine):
    """A JS exception in one actor's action is its own fault: that actor is dropped, the VM and its
    neighbours stay live."""
    prepared = prepare(bundler, engine, HOSTILE[major], major, SMALL)
    host = ActorHost(prepared, ActorSettings(vms=1))
    d = Driver(host)
    try:
        for name in ("x", "y"):
            _ok(d.create(name))
        failed = d.send("x", "oops")
        assert failed.round.outcome is Outcome.GUEST_ERROR and "action exploded" in (failed.round.error or "")
        assert failed.lost == () and host.take_lost() == []
        assert not host.is_live("x") and host.is_live("y")
        assert d.send("y", "ping").restored is False
        assert _n(d.send("x", "ping")) == 1
    finally:
        host.close()


@pytest.mark.parametrize("major", [4, 5])
async def test_hostile_actor_stalls_only_its_own_vm(major, bundler, engine, executor):
    """While a hostile actor spins in VM 0 (until its CPU limit), actors of VM 1 keep stepping: all of
    a neighbour's events complete before the hostile event returns. Neighbours in VM 0 wait for it."""
    limits = dataclasses.replace(SMALL, cpu_ms=3_000, entry_wall_ms=20_000)
    prepared = prepare(bundler, engine, HOSTILE[major], major, limits)
    host = ActorHost(prepared, ActorSettings(vms=2))
    d = Driver(host)
    try:
        bad, near = _ids_on(host, 0, 2)
        far = _ids_on(host, 1, 1)[0]
        for name in (bad, near, far):
            _ok(d.create(name))
        spinning = asyncio.ensure_future(executor.run(d.send, bad, "spin"))
        # The hostile entry holds VM 0's lock from its start: wait (bounded) until it does.
        vm0 = host._vms[0]
        assert vm0 is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _held(vm0.lock):  # noqa: ASYNC110 (a lock of a worker thread)
            await asyncio.sleep(0.005)
        assert _held(vm0.lock), "the hostile event never started"
        latencies = []
        for _ in range(5):
            started = time.perf_counter()
            step = await executor.run(d.send, far, "ping")
            latencies.append(time.perf_counter() - started)
            assert step.round.ok
        assert not spinning.done(), "the neighbour in the other VM waited for the hostile event"
        hit = await spinning
        assert hit.round.outcome is Outcome.EXCEEDED_CPU
        assert [lost.instance_id for lost in hit.lost] == [near]
        assert max(latencies) < 3.0
    finally:
        host.close()


def _held(lock: Any) -> bool:
    """Whether some thread holds an RLock now (without taking it if one does)."""
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


FETCHING = {
    4: """
export default createMachine({
  id: "fetching", predictableActionArguments: true, initial: "idle", context: { public: { status: "none" } },
  states: {
    idle: { on: { load: "loading", spin: { actions: () => { for (;;) {} } } } },
    loading: {
      invoke: { id: "load", src: () => fetch("http://127.0.0.1:9/x").then((r) => r.status),
        onDone: { target: "idle", actions: assign({ public: (c, e) => ({ status: "done" }) }) },
        onError: { target: "failed", actions: assign({ public: (c, e) => ({ status: e.data.name }) }) } },
      on: { spin: { actions: () => { for (;;) {} } } },
    },
    failed: { on: { load: "loading" } },
  },
});
""",
    5: """
export default setup({ actors: { load: fromPromise(() => fetch("http://127.0.0.1:9/x").then((r) => r.status)) } }).createMachine({
  id: "fetching", initial: "idle", context: { public: { status: "none" } },
  states: {
    idle: { on: { load: "loading", spin: { actions: () => { for (;;) {} } } } },
    loading: {
      invoke: { id: "load", src: "load",
        onDone: { target: "idle", actions: assign({ public: () => ({ status: "done" }) }) },
        onError: { target: "failed", actions: assign({ public: ({ event }) => ({ status: event.error.name }) }) } },
      on: { spin: { actions: () => { for (;;) {} } } },
    },
    failed: { on: { load: "loading" } },
  },
});
""",
}


@pytest.mark.parametrize("major", [4, 5])
async def test_lost_actor_with_a_service_in_flight_gets_its_error_event(major, bundler, engine):
    """An actor whose window is open (a fetch of its invoked service issued, committed, not yet
    answered) is lost when a neighbour's fault discards the VM: the window's next entry reports the
    loss, and the next step restores the committed snapshot and delivers the service's error event
    first (runtime-semantics 12: never re-run, never silently lost). The host performed nothing."""
    prepared = prepare(bundler, engine, FETCHING[major], major, SMALL)
    host = ActorHost(prepared, ActorSettings(vms=1))
    d = Driver(host)
    try:
        _ok(d.create("busy"))
        _ok(d.create("bad"))
        loading = d.send("busy", "load", keep=False)  # the window stays open
        assert [e.url for e in loading.round.effects] == ["http://127.0.0.1:9/x"]
        assert loading.round.inflight and d.persisted["busy"]["inflight"] == list(loading.round.inflight)
        hit = d.send("bad", "spin")
        assert hit.round.outcome is Outcome.EXCEEDED_CPU
        assert [(lost.instance_id, lost.open_window) for lost in hit.lost] == [("busy", True)]
        host.take_lost()
        gone = host.resume("busy", [], d.now + 1)
        assert gone.outcome is Outcome.GUEST_ERROR and "gone" in (gone.error or "")
        retry = d.send("busy", "load")
        assert retry.restored is True and retry.round.ok
        first = retry.round.transitions[0]
        assert first.event is not None and "error" in str(first.event.get("type"))
        assert first.public_context == {"status": "ServiceCutOff"}
        assert retry.round.transitions[-1].state == "loading"
        assert [e.url for e in retry.round.effects] == ["http://127.0.0.1:9/x"]  # the new event's own fetch
    finally:
        host.close()


# ---- the sequence check --------------------------------------------------------------------------------

PING = HOSTILE


@pytest.mark.parametrize("major", [4, 5])
async def test_sequence_check_restores_on_mismatch_or_unconfirmed_commit(major, bundler, engine):
    prepared = prepare(bundler, engine, PING[major], major)
    host = ActorHost(prepared, ActorSettings(vms=1))
    d = Driver(host)
    try:
        _ok(d.create("s"))
        old_persisted, old_seq = d.persisted["s"], d.seq["s"]
        assert _n(d.send("s", "ping")) == 1
        live = d.send("s", "ping")
        assert _n(live) == 2 and live.restored is False
        # The caller holds an older committed snapshot (another node moved on, or a stale read):
        stale = host.step(
            "s", old_seq, StepRequest("event", "s", AUTH, persisted=old_persisted, event={"type": "ping"}), 5
        )
        assert stale.restored is True and _n(stale) == 1
        # That round is never confirmed (the commit was refused): the next step restores again.
        again = host.step(
            "s", old_seq, StepRequest("event", "s", AUTH, persisted=old_persisted, event={"type": "ping"}), 6
        )
        assert again.restored is True and _n(again) == 1
        host.committed("s", 99)
        host.end_window("s", True)
        confirmed = host.step(
            "s", 99, StepRequest("event", "s", AUTH, persisted=again.round.persisted, event={"type": "ping"}), 7
        )
        assert confirmed.restored is False and _n(confirmed) == 2
    finally:
        host.close()


# ---- pitfall 6: memory ---------------------------------------------------------------------------------

LEAKY = {
    4: """
export default createMachine({
  id: "leaky", predictableActionArguments: true, initial: "idle", context: { public: { n: 0 }, junk: [] },
  states: { idle: { on: {
    ping: { actions: assign({ public: (c) => ({ n: c.public.n + 1 }) }) },
    leak: { actions: assign({ junk: (c) => [...c.junk, Array.from({ length: 4000 }, (_, i) => "leak" + i).join(",")] }) },
  } } },
});
""",
    5: """
export default createMachine({
  id: "leaky", initial: "idle", context: { public: { n: 0 }, junk: [] },
  states: { idle: { on: {
    ping: { actions: assign({ public: ({ context }) => ({ n: context.public.n + 1 }) }) },
    leak: { actions: assign({ junk: ({ context }) => [...context.junk, Array.from({ length: 4000 }, (_, i) => "leak" + i).join(",")] }) },
  } } },
});
""",
}


@pytest.mark.parametrize("major", [4, 5])
async def test_memory_pressure_names_and_evicts_the_leaking_actor(major, bundler, engine):
    """One actor's context grows; when its VM crosses the budget the host names it (the instance whose
    step crossed, and the largest snapshot), evicts it first, and keeps most neighbours live."""
    prepared = prepare(bundler, engine, LEAKY[major], major)
    host = ActorHost(prepared, ActorSettings(vms=1, measure_every=1, measure_per_actor=0, vm_memory_bytes=2**30))
    d = Driver(host)
    try:
        neighbours = [f"n{i}" for i in range(20)]
        for name in neighbours:
            _ok(d.create(name))
        _ok(d.create("leaky"))
        (base,) = host.measure()
        host.settings = dataclasses.replace(host.settings, vm_memory_bytes=base + 150_000)
        assert host.take_memory_pressure() == []
        events = []
        for _ in range(10):
            _ok(d.send("leaky", "leak"))
            events = host.take_memory_pressure()
            if events:
                break
        assert events, "the VM never crossed its budget"
        event = events[0]
        assert event.crossed_by == "leaky" and event.largest == "leaky"
        assert event.evicted[0] == "leaky" and event.heap_bytes > event.budget_bytes
        assert not host.is_live("leaky")
        assert sum(host.is_live(n) for n in neighbours) >= len(neighbours) // 2
        back = d.send("leaky", "ping")
        assert back.restored is True and _n(back) == 1
        assert len(d.persisted["leaky"]["xstate"]["context"]["junk"]) == len(back.round.transitions[-1].context["junk"])
    finally:
        host.close()


@pytest.mark.parametrize("major", [4, 5])
async def test_count_and_age_evictions_keep_open_windows(major, bundler, engine):
    prepared = prepare(bundler, engine, PING[major], major)
    host = ActorHost(prepared, ActorSettings(vms=1, max_actors_per_vm=3, idle_ms=1_000))
    d = Driver(host)
    try:
        for name in ("a", "b", "c"):
            _ok(d.create(name))
        _ok(d.send("a", "ping"))  # b is now the least recently used
        _ok(d.create("d"))
        assert sorted(host.live_ids()) == ["a", "c", "d"]
        d.now += 5_000
        opened = host.step(
            "c", d.seq["c"], StepRequest("event", "c", AUTH, persisted=d.persisted["c"], event={"type": "ping"}), d.now
        )
        assert opened.round.ok and opened.restored is False
        assert sorted(host.evict_idle(d.now + 10)) == ["a", "d"]  # c's window is open
        assert host.live_ids() == ["c"]
        assert host.evict(["c", "zzz"]) == 1 and host.live_ids() == []
        gone = host.fire_timers("c", d.now)
        assert gone.outcome is Outcome.GUEST_ERROR
    finally:
        host.close()


# ---- effects are rounds: commit before perform ---------------------------------------------------------


@pytest.mark.parametrize("fixture", [f for f in FIXTURES if f.name == "fetcher"], ids=lambda f: f.id)
async def test_effects_are_committed_before_they_are_performed(
    fixture, bundler, engine, executor, transport, clock, stub_url
):
    """Through run_actor_window a live actor's fetch happens only after the round that issued it was
    committed (the host itself performs nothing), and the actor stays live after a settled window."""
    order: list[str] = []

    class Recording:
        async def fetch(self, request, limits):  # type: ignore[no-untyped-def]
            order.append(f"fetch {request.url.rsplit('/', 1)[-1]}")
            return await transport.fetch(request, limits)

    prepared = engine.prepare(bundle_fixture(bundler, fixture))
    host = ActorHost(prepared, ActorSettings(vms=1))
    inst = ActorLocal(prepared, executor, Recording(), clock, name="f", host=host)  # type: ignore[arg-type]
    original = inst._commit

    async def commit(round_: Round, tag: object = None) -> None:
        order.append(f"commit {round_.transitions[-1].state if round_.transitions else '-'}")
        await original(round_, tag)

    inst._commit = commit  # type: ignore[method-assign]
    try:
        await inst.create({"baseUrl": stub_url, "public": {"item": None, "error": None}}, AUTH)
        for item in (7, 3):
            result = await inst.send({"type": "load", "id": item}, AUTH)
            assert result.ok and result.quiescent
        assert order == [
            "commit idle",
            "commit loading",
            "fetch 7",
            "commit loaded",
            "commit loading",
            "fetch 3",
            "commit loaded",
        ]
        assert [s.restored for s in inst.steps] == [True, False, False]
        assert host.is_live("f")
    finally:
        host.close()


# ---- the settle window's 90 s limit still applies per event ------------------------------------------

service = test_settle.service  # the real slow HTTP service fixture of test_settle


@pytest.mark.parametrize("major", [4, 5])
async def test_window_cut_off_drops_the_actor_and_the_next_event_errors_first(
    major, bundler, engine, executor, transport, service
):
    """The settle window ends (settle_window_ms) with a service in flight: the actor is not kept live
    (the window did not settle), and the next event restores it, delivers the service's error event
    first, and never re-runs the service. Same rules as restore-per-event (test_settle)."""
    from runtime import SystemClock

    prepared = prepare(bundler, engine, loader(major), major, limits=Limits(settle_window_ms=300))
    host = ActorHost(prepared, ActorSettings(vms=1))
    inst = ActorLocal(prepared, executor, transport, SystemClock(), name="w", host=host)
    try:
        await inst.create({"baseUrl": service.url})
        result = await inst.send({"type": "load", "path": "/slow"})
        assert result.ok and result.cut_off and not host.is_live("w")
        assert inst.persisted is not None and len(inst.persisted["inflight"]) == 1
        result = await inst.send("ping")
        assert result.ok and not result.cut_off and inst.steps[-1].restored
        assert [t.event["type"] for t in result.committed[0].transitions] == [
            "error.platform.fetcher" if major == 4 else "xstate.error.actor.fetcher",
            "ping",
        ]
        assert service.hits["slow"] == 1 and host.is_live("w")
        assert inst.current is not None and inst.current.public_context["pings"] == 1
    finally:
        host.close()


@pytest.mark.parametrize("major", [4, 5])
async def test_a_refused_event_leaves_the_live_actor_live(major, bundler, engine, executor, transport, clock):
    """allowWrite's denial and an invalid event run nothing: the actor stays live and in step."""
    body = HOSTILE[major].replace("export default", "export const allowRead = () => true;\nexport default")
    source = "export const allowWrite = (req) => req.type !== 'event' || req.event.type !== 'forbidden';\n" + body
    prepared = prepare(
        bundler, engine, 'import { createMachine, assign } from "xstate";\n' + source, major, header=False
    )
    host = ActorHost(prepared, ActorSettings(vms=1))
    inst = ActorLocal(prepared, executor, transport, clock, name="r", host=host)
    try:
        await inst.create(None, AUTH)
        assert (await inst.send("ping", AUTH)).ok
        denied = await inst.send("forbidden", AUTH)
        assert denied.outcome is Outcome.DENIED and host.is_live("r")
        invalid = await inst.send({"type": "xstate.init"}, AUTH)
        assert invalid.outcome is Outcome.INVALID_EVENT and host.is_live("r")
        assert (await inst.send("ping", AUTH)).ok
        assert [s.restored for s in inst.steps] == [True, False, False, False, False]
        assert inst.current is not None and inst.current.public_context == {"n": 2}
    finally:
        host.close()
