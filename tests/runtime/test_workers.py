"""Live actors in worker processes (runtime/workers.py): real worker processes, real QuickJS.

Every test runs on both engines (the ``engine`` fixture) and, where a machine is involved, both
XState majors:

- the same rounds as the in-process ActorHost for every fixture (``test_worker_rounds_match_in_process``);
- a worker SIGKILLed mid-call and between calls, under load: every step returns a round or raises
  the retryable WorkerLost, the worker is restarted, its actors are reported lost and restore from
  their committed snapshots with the same rounds as in-process (``test_kill_*``);
- limits apply inside the workers, a hostile actor discards only its VM (``test_limits_*``);
- no orphan processes when the pool closes or its parent dies (``test_no_orphans_*``);
- replies are unpickled against an allow-list (``test_reply_allow_list``).

No sleeps: every wait polls a condition with a bound.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from runtime import ActorHost, ActorSettings, Bundler, Engine, Limits, Outcome, PreparedMachine, Round, StepRequest
from runtime.workers import WorkerActorHost, WorkerLost, WorkerPool, load_reply
from tests.runtime.test_actor_host import (
    AUTH,
    FETCHING,
    FIXTURES,
    HOSTILE,
    SMALL,
    ActorLocal,
    Driver,
    _n,
    _ok,
    _play,
    comparable,
    deterministic,
)
from tests.scenarios import bundle_fixture
from tests.support import prepare

ROOT = Path(__file__).resolve().parents[2]

COUNTER = {
    4: """
export default createMachine({
  id: "counter", predictableActionArguments: true, initial: "idle", context: { public: { n: 0 } },
  states: { idle: { on: {
    inc: { actions: assign({ public: (c) => ({ n: c.public.n + 1 }) }) },
    spin: { actions: () => { for (;;) {} } },
  } } },
});
""",
    5: """
export default createMachine({
  id: "counter", initial: "idle", context: { public: { n: 0 } },
  states: { idle: { on: {
    inc: { actions: assign({ public: ({ context }) => ({ n: context.public.n + 1 }) }) },
    spin: { actions: () => { for (;;) {} } },
  } } },
});
""",
}


def poll(condition: Callable[[], bool], what: str, bound_s: float = 30.0) -> None:
    """Wait for ``condition`` with a bound (no sleeping in place of synchronisation)."""
    deadline = time.monotonic() + bound_s
    wake = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {bound_s} s: {what}")
        wake.wait(0.01)


def gone(pid: int) -> bool:
    """The process is gone (or a zombie nobody reaped yet: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.fixture
def pool_of(bundler: Bundler, engine: Engine) -> Iterator[Callable[..., WorkerPool]]:
    pools: list[WorkerPool] = []

    def make(workers: int = 2, **kwargs: Any) -> WorkerPool:
        pool = WorkerPool(engine.name, workers=workers, runtime_api=bundler.runtime_api, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pids = pool.pids()
        pool.close()
        assert all(gone(pid) for pid in pids)


# ---- the differential test: every fixture, in-process vs worker processes -------------------------------


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.id)
async def test_worker_rounds_match_in_process(fixture, bundler, engine, executor, transport, stub_url, pool_of):
    """Three instances of a fixture machine, their scenario steps interleaved, through
    run_actor_window: the in-process ActorHost and a worker-process host commit identical rounds,
    snapshots, timers and messages, and both really step live actors."""
    from runtime import FakeClock

    bundle = bundle_fixture(bundler, fixture)
    scenario = fixture.load_scenario(stub_url)
    names = ["inst-a", "inst-b", "inst-c"]
    pool = pool_of(1)
    runs: dict[str, tuple[list[ActorLocal], list[list[Any]]]] = {}
    hosts: list[ActorHost | WorkerActorHost] = []
    for mode in ("in_process", "workers"):
        clock = FakeClock()
        prepared = engine.prepare(bundle)
        host: ActorHost | WorkerActorHost
        if mode == "in_process":
            host = ActorHost(deterministic(prepared, "seed"), ActorSettings(vms=1))
        else:
            host = pool.host(prepared, ActorSettings(vms=1), seed_label="seed")
        hosts.append(host)
        instances = [ActorLocal(prepared, executor, transport, clock, name=n, host=host) for n in names]  # type: ignore[arg-type]
        outcomes = await _play(instances, scenario["steps"], clock)  # type: ignore[arg-type]
        runs[mode] = (instances, outcomes)
    try:
        (ref, ref_out), (got, got_out) = runs["in_process"], runs["workers"]
        assert got_out == ref_out
        for a, b in zip(ref, got, strict=True):
            assert a.rounds, "the scenario committed nothing"
            assert [comparable(r) for r in b.rounds] == [comparable(r) for r in a.rounds]
            assert b.persisted == a.persisted and b.timers == a.timers and b.outbox == a.outbox
            assert [s.restored for s in b.steps] == [s.restored for s in a.steps]
        if sum("event" in step for step in scenario["steps"]) >= 2:
            assert sum(not s.restored for inst in got for s in inst.steps) >= len(names)
    finally:
        for h in hosts:
            h.close()


# ---- worker deaths ---------------------------------------------------------------------------------------


class Caller:
    """The server's side, by hand: one instance is stepped by one thread at a time; a round is
    committed (seq + 1) before the window ends; WorkerLost leaves the instance at its last commit."""

    def __init__(self, host: ActorHost | WorkerActorHost) -> None:
        self.host = host
        self.seq: dict[str, int] = {}
        self.persisted: dict[str, Any] = {}
        self.acknowledged: dict[str, int] = {}
        self.lost_calls = 0
        self.rounds: dict[str, list[Round]] = {}
        self.now = 1_000
        self._lock = threading.Lock()

    def create(self, name: str) -> None:
        step = self.host.step(name, None, StepRequest("create", name, AUTH), self._tick())
        assert step.round.ok, step.round.error
        self._commit(name, step.round)
        self.host.end_window(name, True)
        self.acknowledged[name] = 0

    def send(self, name: str, event: str = "inc") -> Round | None:
        """A round, or None when the call raised the retryable WorkerLost."""
        request = StepRequest("event", name, AUTH, persisted=self.persisted[name], event={"type": event})
        try:
            step = self.host.step(name, self.seq[name], request, self._tick())
        except WorkerLost:
            with self._lock:
                self.lost_calls += 1
            return None
        if step.round.ok:
            self._commit(name, step.round)
            self.acknowledged[name] += 1
            self.rounds.setdefault(name, []).append(step.round)
            try:
                self.host.end_window(name, True)
            except WorkerLost:  # committed already: the actor is simply not kept
                with self._lock:
                    self.lost_calls += 1
        return step.round

    def _commit(self, name: str, round_: Round) -> None:
        self.seq[name] = self.seq.get(name, 0) + 1
        self.persisted[name] = round_.persisted
        self.host.committed(name, self.seq[name])

    def _tick(self) -> int:
        with self._lock:
            self.now += 1
            return self.now


def _n_of(persisted: Any) -> int:
    """The counter of a persisted instance, wherever the major keeps its context."""

    def find(value: Any) -> int | None:
        if isinstance(value, dict):
            public = value.get("public")
            if isinstance(public, dict) and isinstance(public.get("n"), int):
                return int(public["n"])
            for item in value.values():
                found = find(item)
                if found is not None:
                    return found
        return None

    found = find(persisted)
    assert found is not None, persisted
    return found


def _ids_on_worker(pool: WorkerPool, index: int, count: int, prefix: str = "c") -> list[str]:
    return [f"{prefix}{n}" for n in range(10_000) if pool.worker_index(f"{prefix}{n}") == index][:count]


def _same_rounds_in_process(prepared: PreparedMachine, caller: Caller, names: list[str]) -> None:
    """From each instance's committed snapshot, the worker host and an in-process ActorHost produce
    the same next round (the restored actor is the committed one)."""
    reference = ActorHost(prepared, ActorSettings(vms=1))
    try:
        for name in names:
            request = StepRequest("event", name, AUTH, persisted=caller.persisted[name], event={"type": "inc"})
            want = reference.step(name, None, request, caller.now + 1).round
            got = caller.send(name)
            assert got is not None and got.ok, got
            assert comparable(got) == comparable(want)
    finally:
        reference.close()


@pytest.mark.parametrize("major", [4, 5])
async def test_kill_mid_call_and_under_load(major, bundler, engine, pool_of):
    """Four threads step 24 instances on two workers; worker 0 is SIGKILLed while a call is running
    in it (a guest spinning). Every step returns a round or raises WorkerLost; the worker is
    restarted; the actors it held are reported lost; worker 1's actors stay live; every instance's
    counter equals its acknowledged events; restored actors produce the in-process rounds."""
    limits = dataclasses.replace(SMALL, cpu_ms=20_000, entry_wall_ms=60_000)
    prepared = prepare(bundler, engine, COUNTER[major], major, limits)
    pool = pool_of(2)
    host = pool.host(prepared, ActorSettings(vms=2))
    caller = Caller(host)
    doomed = _ids_on_worker(pool, 0, 12)
    spared = _ids_on_worker(pool, 1, 12)
    spinner = _ids_on_worker(pool, 0, 1, prefix="spin")[0]
    try:
        for name in [*doomed, *spared, spinner]:
            caller.create(name)
        old_pid = pool.pids()[0]
        stop = threading.Event()
        outcomes: list[str] = []

        def load(names: list[str]) -> None:
            while not stop.is_set():
                for name in names:
                    got = caller.send(name)
                    outcomes.append("lost" if got is None else got.outcome.value)

        threads = ThreadPoolExecutor(5)
        loads = [threads.submit(load, names[k::2]) for names in (doomed, spared) for k in range(2)]
        spin = threads.submit(caller.send, spinner, "spin")
        worker = pool._worker(0)
        poll(lambda: len(worker.pending) > 0 and len(outcomes) > 40, "the spin call in flight, under load")
        ticks = cpu_ticks(old_pid)
        poll(lambda: cpu_ticks(old_pid) > ticks + 5, "the worker running the spin")
        pool.kill(0)
        assert spin.result(60) is None  # the call in flight raised WorkerLost
        poll(lambda: pool.restarts == 1 and pool.pids()[0] != old_pid, "worker 0 restarted")
        seen = len(outcomes)
        poll(lambda: len(outcomes) > seen + 40, "the load going on after the restart")
        stop.set()
        for f in loads:
            f.result(60)
        threads.shutdown()
        assert set(outcomes) <= {"ok", "lost"} and "ok" in outcomes
        assert caller.lost_calls >= 1
        assert gone(old_pid)
        lost = {a.instance_id for a in host.take_lost()}
        assert spinner in lost and set(doomed) <= lost and not lost & set(spared)
        for name in [*doomed, *spared]:
            assert _n_of(caller.persisted[name]) == caller.acknowledged[name]  # exactly the acknowledged
        # After the restart: the doomed actors were restored, the spared ones stayed live.
        first_after = caller.send(doomed[0])
        assert first_after is not None and first_after.ok
        live = host.live_ids()
        assert set(spared) <= set(live)
        _same_rounds_in_process(prepared, caller, [*doomed[1:4], *spared[:3]])
    finally:
        host.close()


@pytest.mark.parametrize("major", [4, 5])
async def test_kill_between_calls(major, bundler, engine, pool_of):
    """A worker SIGKILLed while idle: it is restarted, its actors are reported lost (with whether
    their window was open), their next step restores from the committed snapshot with the same
    round as in-process, and the other worker's actors are not touched."""
    prepared = prepare(bundler, engine, COUNTER[major], major)
    pool = pool_of(2)
    host = pool.host(prepared, ActorSettings(vms=2))
    caller = Caller(host)
    doomed = _ids_on_worker(pool, 0, 3)
    spared = _ids_on_worker(pool, 1, 3)
    try:
        for name in [*doomed, *spared]:
            caller.create(name)
            assert caller.send(name) is not None
        old = pool.kill(0)
        poll(lambda: pool.restarts == 1, "worker 0 restarted")
        poll(lambda: gone(old), "the killed worker reaped")
        lost = host.take_lost()
        assert {a.instance_id for a in lost} == set(doomed) and not any(a.open_window for a in lost)
        assert all("died" in a.reason for a in lost)
        assert not any(host.is_live(n) for n in doomed) and all(host.is_live(n) for n in spared)
        request = StepRequest("event", doomed[0], AUTH, persisted=caller.persisted[doomed[0]], event={"type": "inc"})
        step = host.step(doomed[0], caller.seq[doomed[0]], request, caller.now + 1)
        assert step.restored and step.round.ok and _n_of(step.round.persisted) == 2
        caller.persisted[doomed[0]] = step.round.persisted
        caller.seq[doomed[0]] += 1
        host.committed(doomed[0], caller.seq[doomed[0]])
        host.end_window(doomed[0], True)
        step = host.step(
            spared[0],
            caller.seq[spared[0]],
            dataclasses.replace(request, instance_name=spared[0], persisted=caller.persisted[spared[0]]),
            caller.now + 2,
        )
        assert not step.restored and _n_of(step.round.persisted) == 2
        caller.persisted[spared[0]] = step.round.persisted
        caller.seq[spared[0]] += 1
        host.committed(spared[0], caller.seq[spared[0]])
        host.end_window(spared[0], True)
        _same_rounds_in_process(prepared, caller, [*doomed, *spared])
    finally:
        host.close()


async def test_a_call_that_never_answers_kills_its_worker(bundler, engine, pool_of):
    """The backstop for a wedged worker: past ``call_timeout_s`` the worker is killed, the call
    raises WorkerLost and the worker is restarted (here a guest spins under a generous CPU limit)."""
    limits = Limits(cpu_ms=60_000, entry_wall_ms=60_000)
    prepared = prepare(bundler, engine, COUNTER[5], 5, limits)
    pool = pool_of(1)
    host = pool.host(prepared)
    caller = Caller(host)
    caller.create("w")  # the worker's start and the version's load are not under the short timeout
    pool.call_timeout_s = 1.0
    old = pool.pids()[0]
    try:
        assert caller.send("w", "spin") is None
        poll(lambda: pool.restarts == 1 and gone(old), "the wedged worker replaced")
        assert {a.instance_id for a in host.take_lost()} == {"w"}
        got = caller.send("w")
        assert got is not None and got.ok and _n_of(got.persisted) == 1
    finally:
        host.close()


@pytest.mark.parametrize("major", [4, 5])
async def test_kill_with_a_service_in_flight_reports_the_open_window(major, bundler, engine, pool_of):
    """An actor whose window is open (its invoked service's fetch committed, not answered) when its
    worker is killed: take_lost says its window was open; the window's next entry (on the restarted
    worker) reports the loss; the next step restores the committed snapshot and delivers the
    service's error event first, as after a VM fault in-process (runtime-semantics 12)."""
    prepared = prepare(bundler, engine, FETCHING[major], major, SMALL)
    pool = pool_of(1)
    host = pool.host(prepared, ActorSettings(vms=1))
    d = Driver(host)  # type: ignore[arg-type]
    try:
        _ok(d.create("busy"))
        _ok(d.create("idle"))
        loading = d.send("busy", "load", keep=False)  # the window stays open
        assert [e.url for e in loading.round.effects] == ["http://127.0.0.1:9/x"]
        old = pool.kill(0)
        poll(lambda: pool.restarts == 1 and gone(old), "the worker restarted")
        assert sorted((a.instance_id, a.open_window) for a in host.take_lost()) == [("busy", True), ("idle", False)]
        cut = host.resume("busy", [], d.now + 1)
        assert cut.outcome is Outcome.GUEST_ERROR and "gone" in (cut.error or "")
        retry = d.send("busy", "load")
        assert retry.restored is True and retry.round.ok
        first = retry.round.transitions[0]
        assert first.event is not None and "error" in str(first.event.get("type"))
        assert first.public_context == {"status": "ServiceCutOff"}
        assert [e.url for e in retry.round.effects] == ["http://127.0.0.1:9/x"]
    finally:
        host.close()


@pytest.mark.parametrize("major", [4, 5])
async def test_sequence_check_through_workers(major, bundler, engine, pool_of):
    """The sequence check holds across the pipe, with confirmations deferred to the next call: a
    stale committed seq or an unconfirmed round restores; a confirmed one steps live."""
    prepared = prepare(bundler, engine, HOSTILE[major], major)
    pool = pool_of(2)
    host = pool.host(prepared)
    d = Driver(host)  # type: ignore[arg-type]
    try:
        _ok(d.create("s"))
        old_persisted, old_seq = d.persisted["s"], d.seq["s"]
        assert _n(d.send("s", "ping")) == 1
        live = d.send("s", "ping")
        assert _n(live) == 2 and live.restored is False
        ping = {"type": "ping"}
        stale = host.step("s", old_seq, StepRequest("event", "s", AUTH, persisted=old_persisted, event=ping), 5)
        assert stale.restored is True and _n(stale) == 1
        again = host.step("s", old_seq, StepRequest("event", "s", AUTH, persisted=old_persisted, event=ping), 6)
        assert again.restored is True and _n(again) == 1  # the round before was never confirmed
        host.committed("s", 99)
        host.end_window("s", True)
        confirmed = host.step("s", 99, StepRequest("event", "s", AUTH, persisted=again.round.persisted, event=ping), 7)
        assert confirmed.restored is False and _n(confirmed) == 2
        assert host.live_ids() == ["s"]  # (a host call: the deferred end of that window applied)
    finally:
        host.close()


async def test_evictions_and_stats_through_workers(bundler, engine, pool_of):
    """evict_idle applies the deferred window ends first, evicts the idle actors in every worker and
    reconciles the front's record; evict drops named actors; stats add up the workers'."""
    prepared = prepare(bundler, engine, COUNTER[5], 5)
    pool = pool_of(2)
    host = pool.host(prepared, ActorSettings(vms=2, idle_ms=1_000))
    caller = Caller(host)
    names = [*_ids_on_worker(pool, 0, 3), *_ids_on_worker(pool, 1, 3)]
    try:
        for name in names:
            caller.create(name)
        assert caller.send(names[0]) is not None
        stats = host.stats()
        assert stats.live == 6 and stats.vms_open == 2 and stats.steps == 7 and stats.live_steps == 1
        assert host.evict([names[1], names[4]]) == 2
        assert not host.is_live(names[1]) and not host.is_live(names[4])
        evicted = host.evict_idle(caller.now + 10_000)
        assert sorted(evicted) == sorted(set(names) - {names[1], names[4]})
        assert not any(host.is_live(n) for n in names) and host.live_ids() == []
        got = caller.send(names[2])
        assert got is not None and got.ok and _n_of(got.persisted) == 1
    finally:
        host.close()


# ---- limits inside workers -------------------------------------------------------------------------------


@pytest.mark.parametrize("major", [4, 5])
@pytest.mark.parametrize(("event", "outcome"), [("spin", Outcome.EXCEEDED_CPU), ("bomb", Outcome.EXCEEDED_MEMORY)])
async def test_limits_apply_inside_workers(major, event, outcome, bundler, engine, pool_of):
    """An infinite loop or a memory bomb hits its per-event limit inside the worker: the round says
    so, its VM's neighbours are reported lost, the worker process itself lives on (no restart), and
    the other worker's actors stay live."""
    prepared = prepare(bundler, engine, HOSTILE[major], major, SMALL)
    pool = pool_of(2)
    host = pool.host(prepared, ActorSettings(vms=2, vm_memory_bytes=8 * 2**20))  # one VM per worker
    caller = Caller(host)
    bad, near = _ids_on_worker(pool, 0, 2)
    far = _ids_on_worker(pool, 1, 1)[0]
    pids = pool.pids()
    try:
        for name in (bad, near, far):
            caller.create(name)
        request = StepRequest("event", bad, AUTH, persisted=caller.persisted[bad], event={"type": event})
        hit = host.step(bad, caller.seq[bad], request, caller.now + 1)
        assert hit.round.outcome is outcome and hit.round.error and "=" in hit.round.error
        assert [a.instance_id for a in hit.lost] == [near]
        assert [a.instance_id for a in host.take_lost()] == [near]
        assert pool.pids() == pids and pool.restarts == 0
        ping = StepRequest("event", far, AUTH, persisted=caller.persisted[far], event={"type": "ping"})
        assert host.step(far, caller.seq[far], ping, caller.now + 2).restored is False
    finally:
        host.close()


# ---- no orphans ------------------------------------------------------------------------------------------

_PARENT = """
import sys
from runtime.workers import WorkerPool
pool = WorkerPool(sys.argv[1], workers=2)
print(" ".join(str(pool.ping(i)) for i in range(2)), flush=True)
sys.stdin.read()
"""


def test_no_orphans_when_the_pool_closes_or_its_parent_dies(engine):
    """close() stops every worker; a parent SIGKILLed leaves none behind (each reads EOF on its pipe)."""
    pool = WorkerPool(engine.name, workers=2)
    pids = [pool.ping(i) for i in range(2)]
    assert pids == pool.pids() and all(not gone(p) for p in pids)
    pool.close()
    assert all(gone(p) for p in pids)
    with pytest.raises(RuntimeError, match="closed"):
        pool.ping(0)

    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, engine.name], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        children = [int(p) for p in parent.stdout.readline().split()]
        assert len(children) == 2 and all(not gone(p) for p in children)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        poll(lambda: all(gone(p) for p in children), "the workers of a killed parent exit")
    finally:
        if parent.poll() is None:
            parent.kill()
        if parent.stdin is not None:
            parent.stdin.close()
        if parent.stdout is not None:
            parent.stdout.close()


# ---- the reply allow-list --------------------------------------------------------------------------------


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def test_reply_allow_list():
    """Replies are unpickled against an allow-list: the runtime's value classes load, a reply naming
    any other global (a worker taken over by the guest trying to run code in the parent) does not."""
    round_ = Round(Outcome.OK, persisted={"a": [1, "x", None]})
    assert load_reply(pickle.dumps((1, True, (round_, True, [], [])))) == (1, True, (round_, True, [], []))
    with pytest.raises(pickle.UnpicklingError, match=r"(posix|os)\.system"):
        load_reply(pickle.dumps((1, True, _Evil())))
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        load_reply(pickle.dumps((1, True, eval)))


def test_a_worker_that_cannot_start_is_not_restarted_in_a_loop():
    """A worker that dies before answering anything (here: an engine name it cannot make) fails the
    call with WorkerLost and is started again only by the next call that needs it."""
    pool = WorkerPool("no-such-engine", workers=1)
    try:
        first = pool.pids()[0]
        with pytest.raises(WorkerLost, match="died"):
            pool.ping(0)
        poll(lambda: gone(first), "the broken worker exited")
        assert pool.restarts == 0 and pool.pids() == [first]  # no restart of its own accord
        with pytest.raises(WorkerLost):
            pool.ping(0)
        assert pool.restarts == 1 and pool.pids() != [first]
    finally:
        pool.close()
