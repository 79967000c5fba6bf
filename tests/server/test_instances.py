"""Instance processing on a real SQLite file: one event at a time, commit before answer, gap-free
history, optimistic concurrency, bad input leaving nothing behind, the settle window."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from runtime import Limits, SystemClock
from runtime.engines import ENGINE_NAMES
from server.engine import DurableEngine
from server.errors import Conflict, InvalidParameter, MachineError, NotFound, Paused, Rejected
from tests.server.conftest import Deployment, settings_for
from tests.support import eventually

COUNTER = {
    4: """
export default createMachine({
  id: "counter", predictableActionArguments: true, initial: "idle",
  context: { public: { seen: [] } },
  states: { idle: { on: {
    add: { actions: assign({ public: (c, e) => ({ seen: [...c.public.seen, e.n] }) }) },
    log: { actions: (c, e) => { console.log("hello " + e.n); console.error("oops " + e.n); } },
    arm: "armed",
  } }, armed: { after: { 60000: "idle" }, on: { disarm: "idle" } } },
  on: {
    grow: { actions: assign({ blob: () => "x".repeat(500000) }) },
    boom: { actions: () => { throw new Error("kaboom"); } },
  },
});
""",
    5: """
export default createMachine({
  id: "counter", initial: "idle",
  context: { public: { seen: [] } },
  states: { idle: { on: {
    add: { actions: assign({ public: ({ context, event }) => ({ seen: [...context.public.seen, event.n] }) }) },
    log: { actions: ({ event }) => { console.log("hello " + event.n); console.error("oops " + event.n); } },
    arm: "armed",
  } }, armed: { after: { 60000: "idle" }, on: { disarm: "idle" } } },
  on: {
    grow: { actions: assign({ blob: () => "x".repeat(500000) }) },
    boom: { actions: () => { throw new Error("kaboom"); } },
  },
});
""",
}

MAJORS = [4, 5]


async def history(engine: DurableEngine, org_id: str, slug: str, name: str):
    machine_id = await engine.store.machine_id(org_id, slug)
    row = await engine.store.find_instance(machine_id, name)
    assert row is not None
    return row, await engine.store.transitions(row.id, limit=10_000)


@pytest.mark.parametrize("major", MAJORS)
async def test_create_send_read_commit_history_with_monotonic_ts(durable, deploy: Deployment, major):
    await deploy.machine("counter", COUNTER[major], major)
    svc = durable.instances
    created = await svc.create(deploy.org_id, "counter", "i1", context={"public": {"seen": [0]}})
    assert created.state == "idle" and created.public_context == {"seen": [0]}
    after = await svc.send_event(deploy.org_id, "counter", "i1", {"type": "add", "n": 1}, {})
    assert after.public_context == {"seen": [0, 1]}
    assert after.ts > created.ts
    read = await svc.read(deploy.org_id, "counter", "i1", {"anyone": True})
    assert read.wire() == after.wire()
    row, transitions = await history(durable, deploy.org_id, "counter", "i1")
    assert [t.seq for t in transitions] == [1, 2]
    assert [t.event["type"] for t in transitions] == ["xstate.init", "add"]
    assert row.seq == 2 and row.ts == after.ts
    with pytest.raises(Conflict):
        await svc.create(deploy.org_id, "counter", "i1")
    with pytest.raises(NotFound):
        await svc.send_event(deploy.org_id, "counter", "missing", "add", {})
    with pytest.raises(NotFound):
        await svc.read(deploy.org_id, "counter", "missing", {})


@pytest.mark.parametrize("major", MAJORS)
async def test_concurrent_events_to_one_instance_keep_a_gap_free_history_in_arrival_order(
    durable, deploy: Deployment, major
):
    await deploy.machine("counter", COUNTER[major], major)
    svc = durable.instances
    await svc.create(deploy.org_id, "counter", "hot")
    results = await asyncio.gather(
        *(svc.send_event(deploy.org_id, "counter", "hot", {"type": "add", "n": n}, {}) for n in range(60))
    )
    row, transitions = await history(durable, deploy.org_id, "counter", "hot")
    assert [t.seq for t in transitions] == list(range(1, 62))
    order = [t.event["n"] for t in transitions[1:]]
    assert sorted(order) == list(range(60))
    assert order == list(range(60))  # gather submits in order; the mailbox keeps it
    assert row.public_context["seen"] == order
    # Each caller got a state that contains its own event (committed before it was answered).
    for n, state in enumerate(results):
        assert n in state.public_context["seen"]


@pytest.mark.parametrize("major", MAJORS)
async def test_bad_input_leaves_the_instance_exactly_as_before(durable, deploy: Deployment, major):
    await deploy.machine("counter", COUNTER[major], major)
    svc = durable.instances
    await svc.create(deploy.org_id, "counter", "i1")
    await svc.send_event(deploy.org_id, "counter", "i1", "arm", {})
    machine_id = await durable.store.machine_id(deploy.org_id, "counter")

    async def snapshot():
        row = await durable.store.find_instance(machine_id, "i1")
        assert row is not None
        return row, await durable.store.transitions(row.id), await durable.store.timers_of(row.id)

    before = await snapshot()
    assert len(before[2]) == 1
    with pytest.raises(MachineError) as too_big:
        await svc.send_event(deploy.org_id, "counter", "i1", "grow", {})
    assert too_big.value.extra["limit"] == "max_context_bytes"
    assert too_big.value.status == 422
    assert await snapshot() == before
    with pytest.raises(MachineError, match="kaboom"):
        await svc.send_event(deploy.org_id, "counter", "i1", "boom", {})
    assert await snapshot() == before
    with pytest.raises(InvalidParameter):
        await svc.send_event(deploy.org_id, "counter", "i1", {"type": "x", "blob": "y" * 70_000}, {})
    with pytest.raises(InvalidParameter):
        await svc.send_event(deploy.org_id, "counter", "i1", {"no": "type"}, {})
    assert await snapshot() == before
    # The instance is fine afterwards.
    state = await svc.send_event(deploy.org_id, "counter", "i1", "disarm", {})
    assert state.state == "idle"
    logs = await durable.store.logs(deploy.org_id, instance_name="i1")
    assert any("kaboom" in line["text"] and line["stream"] == "stderr" for line in logs)


@pytest.mark.parametrize("major", MAJORS)
async def test_log_lines_are_stored_with_machine_instance_version_and_stream(durable, deploy: Deployment, major):
    version = await deploy.machine("counter", COUNTER[major], major)
    await durable.instances.create(deploy.org_id, "counter", "i1")
    await durable.instances.send_event(deploy.org_id, "counter", "i1", {"type": "log", "n": 7}, {})
    logs = await durable.store.logs(deploy.org_id, instance_name="i1")
    lines = {(line["stream"], line["text"]) for line in logs}
    assert {("stdout", "hello 7"), ("stderr", "oops 7")} <= lines
    assert all(line["machine_slug"] == "counter" and line["version_id"] == version for line in logs)


AUTHORIZED = """
export const allowRead = ({ authContext }) => authContext.role === "reader";
export const allowWrite = ({ authContext }) => authContext.role === "writer";
export default createMachine({ id: "a", initial: "idle", states: { idle: { on: { go: "done" } }, done: {} } });
"""


async def test_authorizers_decide_reads_and_writes(durable, deploy: Deployment):
    await deploy.machine("auth", 'import { createMachine } from "xstate";\n' + AUTHORIZED, header=False)
    svc = durable.instances
    with pytest.raises(Rejected):
        await svc.create(deploy.org_id, "auth", "i1", auth_context={"role": "reader"})
    await svc.create(deploy.org_id, "auth", "i1", auth_context={"role": "writer"})
    with pytest.raises(Rejected):
        await svc.send_event(deploy.org_id, "auth", "i1", "go", {"role": "reader"})
    with pytest.raises(Rejected):
        await svc.read(deploy.org_id, "auth", "i1", {"role": "writer"})
    assert (await svc.read(deploy.org_id, "auth", "i1", {"role": "reader"})).state == "idle"
    assert (await svc.read(deploy.org_id, "auth", "i1", None)).state == "idle"  # admin: no authorizer


async def test_a_paused_instance_rejects_events(durable, deploy: Deployment):
    await deploy.machine("counter", COUNTER[4])
    svc = durable.instances
    await svc.create(deploy.org_id, "counter", "i1")
    machine_id = await durable.store.machine_id(deploy.org_id, "counter")
    row = await durable.store.find_instance(machine_id, "i1")
    assert row is not None
    await durable.store.set_status(row.id, "paused")
    with pytest.raises(Paused):
        await svc.send_event(deploy.org_id, "counter", "i1", {"type": "add", "n": 1}, {})
    await durable.store.set_status(row.id, "running")
    assert (await svc.send_event(deploy.org_id, "counter", "i1", {"type": "add", "n": 1}, {})).public_context == {
        "seen": [1]
    }


async def test_two_processes_on_one_file_cannot_both_win(db_dir, deploy: Deployment, durable, bundler, clock):
    """Optimistic concurrency on seq: a second engine on the same file (another process) that read
    the same seq loses with a Conflict and commits nothing."""
    await deploy.machine("counter", COUNTER[4])
    await durable.instances.create(deploy.org_id, "counter", "i1")
    other = DurableEngine(settings_for(db_dir), clock=clock, bundler=bundler)
    await other.start()
    try:
        results = await asyncio.gather(
            *(
                engine.instances.send_event(deploy.org_id, "counter", "i1", {"type": "add", "n": n}, {})
                for n in range(10)
                for engine in (durable, other)
            ),
            return_exceptions=True,
        )
    finally:
        await other.stop()
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, Conflict) for r in losses), losses
    _, transitions = await history(durable, deploy.org_id, "counter", "i1")
    assert [t.seq for t in transitions] == list(range(1, len(wins) + 2))
    assert len(transitions) - 1 == len(wins)


FETCHER = """
export default createMachine({
  id: "f", predictableActionArguments: true, initial: "idle",
  context: { public: { value: null, error: null } },
  states: {
    idle: { on: { load: "loading" } },
    loading: {
      on: { cancel: "idle" },
      invoke: {
        id: "get",
        src: (c, e) => fetch(c.url + e.path).then((r) => r.json()),
        onDone: { target: "loaded", actions: assign({ public: (c, e) => ({ value: e.data.value, error: null }) }) },
        onError: { target: "failed", actions: assign({ public: (c, e) => ({ value: null, error: e.data.name }) }) },
      },
    },
    loaded: { on: { load: "loading" } },
    failed: { on: { load: "loading" } },
  },
});
"""


@pytest.fixture
async def slow_server():
    from aiohttp import web

    async def after(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.match_info["seconds"]))
        return web.json_response({"value": request.match_info["seconds"]})

    app = web.Application()
    app.router.add_get("/after/{seconds}", after)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_the_window_waits_for_a_service_and_cuts_off_one_that_never_ends(db_dir, bundler, slow_server):
    engine = DurableEngine(
        settings_for(db_dir, limits=Limits(settle_window_ms=6_000)), clock=SystemClock(), bundler=bundler
    )
    await engine.start()
    try:
        org = await engine.store.create_org("o", engine.clock.now_ms())
        await Deployment(engine, org).machine("f", FETCHER)
        svc = engine.instances
        await svc.create(org, "f", "i1", context={"url": slow_server})
        # A service resolving after 1 s (well inside the 6 s window): the call returns the settled state.
        loop = asyncio.get_running_loop()
        started = loop.time()
        state = await svc.send_event(org, "f", "i1", {"type": "load", "path": "/after/1"}, {})
        assert state.state == "loaded" and state.public_context["value"] == "1"
        assert loop.time() - started >= 1.0
        # A service that outlives the window: the latest state comes back when the window ends ...
        state = await svc.send_event(org, "f", "i1", {"type": "load", "path": "/after/60"}, {})
        assert state.state == "loading"
        # ... and the next event first delivers the service's error event.
        state = await svc.send_event(org, "f", "i1", {"type": "load", "path": "/after/0"}, {})
        assert state.state == "loaded"
        _, transitions = await history(engine, org, "f", "i1")
        assert [t.event["type"] for t in transitions][-3:] == ["error.platform.get", "load", "done.invoke.get"]
        # An event arriving while a window is open joins it instead of waiting for the window.
        slow = asyncio.ensure_future(svc.send_event(org, "f", "i1", {"type": "load", "path": "/after/60"}, {}))

        async def loading() -> bool:  # the window committed `loading` and waits for the fetch
            _, transitions = await history(engine, org, "f", "i1")
            return len(transitions) == count + 1 and transitions[-1].state == "loading"

        count = len(transitions)
        await eventually(loading, within_s=60)
        cancelled = await svc.send_event(org, "f", "i1", "cancel", {})
        assert cancelled.state == "idle"
        assert (await asyncio.wait_for(slow, 60)).state == "idle"
    finally:
        await engine.stop()


async def _columns(durable) -> dict[str, set[str]]:
    """The schema as it is in the database: table -> column names (either backend)."""
    store = durable.store
    if store.db.kind == "postgres":
        rows = await store._read(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
            " AND table_name <> 'statehost_schema'"
        )
        columns: dict[str, set[str]] = {}
        for r in rows:
            columns.setdefault(r["table_name"], set()).add(r["column_name"])
        columns["migrations"].discard("rowid")  # SQLite's implicit rowid, explicit on PostgreSQL
        return columns
    conn = sqlite3.connect(durable.settings.database)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in tables if t != "sqlite_sequence"}
    finally:
        conn.close()


async def test_the_database_is_durable_and_its_schema_versioned_and_the_same_on_both_backends(durable, tmp_path):
    store = durable.store
    if store.db.kind == "postgres":
        row = await store._read_one("SELECT version FROM statehost_schema")
        assert row is not None and row["version"] == store.schema_version >= 7
        row = await store._read_one("SHOW synchronous_commit")
        assert row is not None and row[0] == "on"
    else:
        conn = sqlite3.connect(durable.settings.database)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == store.schema_version >= 7
        finally:
            conn.close()
    # Both backends end at the same schema: the same tables with the same columns. (The other
    # backend's schema is built here from scratch, in a fresh SQLite file.)
    columns = await _columns(durable)
    assert {"orgs", "machines", "instances", "transitions", "timers", "logs", "instance_leases"} <= set(columns)
    if store.db.kind == "postgres":
        other = DurableEngine(settings_for(tmp_path / "sqlite-twin", database_url=None), bundler=durable.bundler)
        await other.start()
        try:
            assert await _columns(other) == columns
        finally:
            await other.stop()


MODULE_STATE = """
let calls = 0;
export default createMachine({ id: "m", predictableActionArguments: true, initial: "idle", states: {
  idle: { on: { ping: { actions: () => { calls += 1; console.log("calls " + calls); } }, wait: "waiting" } },
  waiting: { invoke: { src: () => new Promise(() => {}) }, on: { ping: { actions: () => { calls += 1; console.log("calls " + calls); } } } },
} });
"""


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
async def test_live_actors_serve_their_instance_only_at_its_committed_state(engine_name, db_dir, bundler, clock):
    """Actors mode: an instance's events run on its live actor while it holds exactly the committed
    row; a window that ends with a service running, another process moving the instance on, or
    the VM's capacity send the next event to a restore from the row. Module-level variables are
    per VM, shared by the version's actors in it (docs/threat-model.md)."""
    settings = settings_for(db_dir, engine=engine_name, sandbox_mode="actors", actor_vms=1, actors_per_vm=2)
    engine = DurableEngine(settings, clock=clock, bundler=bundler)
    await engine.start()
    try:
        org = await engine.store.create_org("o", clock.now_ms())
        await Deployment(engine, org).machine("m", MODULE_STATE)
        svc = engine.instances
        pool = svc.actors
        assert pool is not None

        async def calls(name: str) -> list[str]:
            return [line["text"] for line in await engine.store.logs(org, instance_name=name)]

        for name in ("a", "b"):
            await svc.create(org, "m", name)  # a create runs in a fresh sandbox (no instance id yet)
        for _ in range(3):
            await svc.send_event(org, "m", "a", "ping", {})
        assert pool.stats()["restores"] == 1 and pool.stats()["live_steps"] == 2
        await svc.send_event(org, "m", "b", "ping", {})
        # One VM: b's actor sees the module variable a's events left (per VM, not per instance).
        assert await calls("a") == ["calls 1", "calls 2", "calls 3"]
        assert await calls("b") == ["calls 4"]
        assert pool.stats()["restores"] == 2 and pool.stats()["live"] == 2
        # A window that ends with a service running (cut off) keeps no actor: the next event restores.
        await svc.send_event(org, "m", "a", "wait", {})
        await svc.send_event(org, "m", "a", "ping", {})
        assert pool.stats()["restores"] == 3
        # Another process moving the instance on: the seq check restores b from the row.
        other = DurableEngine(settings_for(db_dir, sandbox_mode="pristine"), clock=clock, bundler=bundler)
        await other.start()
        try:
            await svc.send_event(org, "m", "b", "ping", {})
            await other.instances.send_event(org, "m", "b", "ping", {})
        finally:
            await other.stop()
        before = pool.stats()["restores"]
        state = await svc.send_event(org, "m", "b", "ping", {})
        assert pool.stats()["restores"] == before + 1
        machine_id = await engine.store.machine_id(org, "m")
        row = await engine.store.find_instance(machine_id, "b")
        assert row is not None and row.ts == state.ts
        assert [t.seq for t in await engine.store.transitions(row.id)] == [1, 2, 3, 4, 5]
        # Capacity: two actors per VM; a third instance's event evicts the least recently used.
        await svc.create(org, "m", "c")
        await svc.send_event(org, "m", "c", "ping", {})
        assert pool.stats()["live"] == 2 and pool.stats()["evictions"] >= 1
    finally:
        await engine.stop()


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
async def test_a_fault_discards_the_vm_and_its_actors_restore_from_their_commits(engine_name, db_dir, bundler, clock):
    """A limit hit by one instance discards its VM; the other actors of that VM are lost, and their
    next events restore them from their committed snapshots: nothing committed is lost."""
    settings = settings_for(
        db_dir, engine=engine_name, sandbox_mode="actors", actor_vms=1, limits=Limits(cpu_ms=200, entry_wall_ms=2_000)
    )
    engine = DurableEngine(settings, clock=clock, bundler=bundler)
    await engine.start()
    try:
        org = await engine.store.create_org("o", clock.now_ms())
        spinning = COUNTER[4].replace(
            "on: {\n    grow:", "on: {\n    spin: { actions: () => { for (;;) {} } },\n    grow:"
        )
        assert "spin:" in spinning
        await Deployment(engine, org).machine("counter", spinning, 4)
        svc = engine.instances
        pool = svc.actors
        assert pool is not None
        for name in ("good", "bad"):
            await svc.create(org, "counter", name)
            await svc.send_event(org, "counter", name, {"type": "add", "n": 1}, {})
        assert pool.stats()["live"] == 2
        with pytest.raises(MachineError):
            await svc.send_event(org, "counter", "bad", "spin", {})
        assert pool.stats()["vm_discards"] == 1 and pool.stats()["lost"] == 1 and pool.stats()["live"] == 0
        state = await svc.send_event(org, "counter", "good", {"type": "add", "n": 2}, {})
        assert state.public_context == {"seen": [1, 2]}
        state = await svc.send_event(org, "counter", "bad", {"type": "add", "n": 3}, {})
        assert state.public_context == {"seen": [1, 3]}
    finally:
        await engine.stop()


async def test_requests_that_joined_a_failing_window_are_answered(
    durable, deploy: Deployment, slow_server, monkeypatch
):
    """A window that raises (here: the store refuses a commit) answers everyone who joined it: with
    the error where their round was not committed, with the committed state where it was (its event
    is in the history; an error would make the client send it again)."""
    await deploy.machine("f", FETCHER)
    svc = durable.instances
    await svc.create(deploy.org_id, "f", "i1", context={"url": slow_server})
    original = durable.store.commit_round
    calls = 0

    async def failing_second_commit(commit, now_ms):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Conflict("injected: another process moved the instance on")
        await original(commit, now_ms)

    monkeypatch.setattr(durable.store, "commit_round", failing_second_commit)
    first = asyncio.ensure_future(svc.send_event(deploy.org_id, "f", "i1", {"type": "load", "path": "/after/60"}, {}))

    async def window_open() -> bool:  # its first round (`loading`) committed; it waits for the fetch
        return calls >= 1

    await eventually(window_open, within_s=60)
    joined = asyncio.ensure_future(svc.send_event(deploy.org_id, "f", "i1", "cancel", {}))
    first_outcome, joined_outcome = await asyncio.wait_for(asyncio.gather(first, joined, return_exceptions=True), 60)
    assert isinstance(joined_outcome, Conflict)
    assert not isinstance(first_outcome, BaseException), first_outcome
    machine_id = await durable.store.machine_id(deploy.org_id, "f")
    row = await durable.store.find_instance(machine_id, "i1")
    assert row is not None and first_outcome.ts == row.ts  # the state its own round committed
    assert [t.event["type"] for t in await durable.store.transitions(row.id)][-1] == "load"


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
async def test_a_live_actor_starts_every_window_with_fresh_per_event_budgets(engine_name, db_dir, bundler, slow_server):
    """Regression: the fetch count (max_fetches) and the log caps are per event, also when the
    instance's live actor serves many of them."""
    engine = DurableEngine(
        settings_for(db_dir, engine=engine_name, sandbox_mode="actors", limits=Limits(max_fetches=3, max_log_lines=5)),
        clock=SystemClock(),
        bundler=bundler,
    )
    await engine.start()
    try:
        org = await engine.store.create_org("o", engine.clock.now_ms())
        await Deployment(engine, org).machine(
            "f", FETCHER.replace("src: (c, e) =>", "src: (c, e) => console.log('loading ' + e.path) ||"), 4
        )
        await engine.instances.create(org, "f", "i1", context={"url": slow_server})
        for n in range(6):  # twice the fetch budget, and more log lines than one event may write
            state = await engine.instances.send_event(org, "f", "i1", {"type": "load", "path": f"/after/0.0{n}"}, {})
            assert state.state == "loaded", (n, state)
        logs = [line["text"] for line in await engine.store.logs(org, instance_name="i1", limit=100)]
        assert [text for text in logs if text.startswith("loading")] == [f"loading /after/0.0{n}" for n in range(6)]
    finally:
        await engine.stop()
