"""The server with its live actors in worker processes (``sandbox_workers``, runtime.WorkerPool).

A representative part of the server suite runs again here with two worker processes (the tests are
imported: this module's ``durable`` fixture overrides conftest's), and a worker killed while it runs
an instance's event answers that request 503 ``unavailable`` (nothing of it stored), restores the
instance from its committed row on its next event, and a timer whose delivery met the kill is held
back and delivered once, not counted as a failed attempt. Kills under load of a real
``statehost serve``: test_worker_kills.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime import FakeClock, Limits, WorkerPool
from server.engine import DurableEngine
from server.errors import Unavailable
from tests.server.conftest import Deployment, settings_for
from tests.server.test_children import (  # noqa: F401  (collected again here, on worker processes)
    test_allow_write_sees_the_sender_and_refusals_are_logged,
    test_persistent_invocation_reports_its_output_with_done_invoke,
)
from tests.server.test_instances import (  # noqa: F401
    COUNTER,
    FETCHER,
    history,
    slow_server,
    test_authorizers_decide_reads_and_writes,
    test_bad_input_leaves_the_instance_exactly_as_before,
    test_concurrent_events_to_one_instance_keep_a_gap_free_history_in_arrival_order,
    test_create_send_read_commit_history_with_monotonic_ts,
    test_log_lines_are_stored_with_machine_instance_version_and_stream,
    test_requests_that_joined_a_failing_window_are_answered,
)
from tests.server.test_timers import (  # noqa: F401
    test_a_paused_instance_gets_its_timer_once_resumed,
    test_after_fires_on_time_and_exactly_once,
    test_cancel_removes_the_timer,
)
from tests.support import eventually

assert FETCHER  # used by the imported tests


@pytest.fixture
async def durable(db_dir: Path, clock: FakeClock, bundler) -> AsyncIterator[DurableEngine]:
    """Overrides conftest's: WASM, actors mode, the live actors in two worker processes."""
    settings = settings_for(db_dir, engine="quickjs-wasm", sandbox_mode="actors", sandbox_workers=2)
    engine = DurableEngine(settings, clock=clock, bundler=bundler)
    await engine.start()
    assert engine.worker_pool is not None and engine.worker_pool.size == 2
    try:
        yield engine
    finally:
        await engine.stop()


def cpu_ms(pid: int) -> float:
    """User + system CPU time of process ``pid`` (/proc), in ms."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


async def spinning(pool: WorkerPool, before: float) -> None:
    """Wait until worker 0 has used 300 ms of CPU since ``before``: the guest is in its loop (nothing
    else runs there meanwhile)."""
    pid = pool.pids()[0]

    async def busy() -> bool:
        return cpu_ms(pid) - before >= 300

    await eventually(busy, within_s=120, what="the guest spinning in the worker", every_s=0.02)


MACHINE = """
export default createMachine({
  id: "w", predictableActionArguments: true, initial: "idle",
  context: { public: { seen: [], spin: false } },
  states: {
    idle: { on: { arm: "armed" } },
    armed: { after: { 1000: { target: "idle", actions: "fired" } } },
  },
  on: {
    add: { actions: assign({ public: (c, e) => ({ ...c.public, seen: [...c.public.seen, e.n] }) }) },
    spin: { actions: () => { for (;;) {} } },
    spinOnTimer: { actions: assign({ public: (c, e) => ({ ...c.public, spin: e.on }) }) },
  },
}, { actions: { fired: (c) => { if (c.public.spin) { for (;;) {} } } } });
"""


async def in_mailbox(engine: DurableEngine, org: str, name: str, count: int) -> None:
    machine_id = await engine.store.machine_id(org, "w")

    async def waiting() -> bool:
        return len(engine.instances.mailbox.waiting((machine_id, name))) >= count

    await eventually(waiting, within_s=60, what=f"{count} requests waiting for {name}")


@pytest.fixture
async def one_worker(tmp_path: Path, clock: FakeClock, bundler) -> AsyncIterator[tuple[DurableEngine, str]]:
    """One worker process; limits far above the test's bounds, so only the kill stops a spin."""
    settings = settings_for(
        tmp_path,
        engine="quickjs-native",
        sandbox_mode="actors",
        sandbox_workers=1,
        limits=Limits(cpu_ms=600_000, entry_wall_ms=600_000),
    )
    engine = DurableEngine(settings, clock=clock, bundler=bundler)
    await engine.start()
    try:
        org = await engine.store.create_org("o", clock.now_ms())
        await Deployment(engine, org).machine("w", MACHINE)
        yield engine, org
    finally:
        await engine.stop()


@pytest.mark.timeout(300)
async def test_a_worker_killed_mid_event_answers_503_and_the_instance_restores(one_worker):
    engine, org = one_worker
    pool, svc = engine.worker_pool, engine.instances
    assert pool is not None and svc.actors is not None
    await svc.create(org, "w", "i1")
    for n in (1, 2):
        await svc.send_event(org, "w", "i1", {"type": "add", "n": n}, {})
    first_pid = pool.ping(0)
    before = cpu_ms(first_pid)
    spin = asyncio.ensure_future(svc.send_event(org, "w", "i1", "spin", {}))
    await spinning(pool, before)
    # An event sent meanwhile waits in the instance's inbox (the window is in the guest).
    queued = asyncio.ensure_future(svc.send_event(org, "w", "i1", {"type": "add", "n": 3}, {}))
    await in_mailbox(engine, org, "i1", 2)
    assert pool.kill(0) == first_pid
    with pytest.raises(Unavailable) as lost:
        await asyncio.wait_for(spin, 60)
    assert lost.value.status == 503 and lost.value.code == "unavailable"
    assert "worker" in str(lost.value) and "retry" in str(lost.value)
    # Nothing of the lost window is stored; the queued event gets a window of its own, on the
    # actor restored from the row in the restarted worker.
    state = await asyncio.wait_for(queued, 60)
    assert state.public_context["seen"] == [1, 2, 3]
    state = await svc.send_event(org, "w", "i1", {"type": "add", "n": 4}, {})
    assert state.public_context["seen"] == [1, 2, 3, 4]
    assert pool.pids()[0] != first_pid and pool.restarts == 1
    _, transitions = await history(engine, org, "w", "i1")
    assert [t.event.get("n") for t in transitions if t.event.get("type") == "add"] == [1, 2, 3, 4]
    assert all(t.event.get("type") != "spin" for t in transitions)
    assert svc.actors.lost >= 1


@pytest.mark.timeout(300)
async def test_a_timer_whose_delivery_met_a_worker_kill_is_held_back_and_delivered_once(one_worker, clock: FakeClock):
    engine, org = one_worker
    pool, svc = engine.worker_pool, engine.instances
    assert pool is not None
    await svc.create(org, "w", "i1")
    await svc.send_event(org, "w", "i1", {"type": "spinOnTimer", "on": True}, {})
    await svc.send_event(org, "w", "i1", "arm", {})
    pid = pool.ping(0)
    before = cpu_ms(pid)
    clock.advance(1_000)
    engine.timers.wake()
    await spinning(pool, before)
    # An event sent meanwhile (it stops the spin) waits in the inbox behind the timer's window.
    queued = asyncio.ensure_future(svc.send_event(org, "w", "i1", {"type": "spinOnTimer", "on": False}, {}))
    await in_mailbox(engine, org, "i1", 2)
    held_back = engine.timers.held_back
    pool.kill(0)
    await asyncio.wait_for(queued, 60)

    async def fired() -> bool:
        row, _ = await history(engine, org, "w", "i1")
        return row.state == "idle"

    await eventually(fired, within_s=60, what="the timer delivered")
    assert engine.timers.held_back == held_back + 1  # held back once (UNAVAILABLE_RETRY_S), not retried
    row, transitions = await history(engine, org, "w", "i1")
    assert [t.state for t in transitions] == ["idle", "idle", "armed", "armed", "idle"]
    assert await engine.store.timers_of(row.id) == []


def test_the_flag_takes_a_count_or_auto_and_names_a_bad_value(monkeypatch, capsys):
    from server.cli import _parser
    from server.config import settings_from_args

    monkeypatch.delenv("STATEHOST_SANDBOX_WORKERS", raising=False)

    def parse(*argv: str) -> int | None:
        return settings_from_args(_parser().parse_args(["serve", *argv])).sandbox_workers

    assert parse() == 0
    assert parse("--sandbox-workers", "2") == 2
    assert parse("--sandbox-workers", "auto") is None
    monkeypatch.setenv("STATEHOST_SANDBOX_WORKERS", "auto")
    assert parse() is None
    assert parse("--sandbox-workers", "3") == 3  # the flag wins
    with pytest.raises(SystemExit) as exited:
        parse("--sandbox-workers", "many")
    assert exited.value.code == 2
    assert "'many' is not a whole number; use 0 or more, or auto" in capsys.readouterr().err


async def test_pristine_mode_starts_no_workers(tmp_path: Path, clock: FakeClock, bundler):
    settings = settings_for(tmp_path, sandbox_mode="pristine", sandbox_workers=2)
    engine = DurableEngine(settings, clock=clock, bundler=bundler)
    await engine.start()
    try:
        assert engine.worker_pool is None
    finally:
        await engine.stop()
