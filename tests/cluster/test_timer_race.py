"""Two nodes (in-process engines) on one PostgreSQL database: their timer loops race for the same due
timers and each timer fires exactly once; a node whose instance lease was taken over can no longer
commit for that instance (fencing), neither through the store nor from a window that was open when
it lost the lease."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

from runtime import Bundler, FakeClock, FetchPolicy, Upload
from server import timers
from server.config import Settings
from server.engine import DurableEngine
from server.errors import Conflict, Unavailable
from server.store import Lease, RoundCommit, TransitionRecord
from tests.support import ALLOW_ALL, HEADER, eventually

INSTANCES = 60
# Three timers per instance, two of them due together: 180 timers, due in two waves.
RACE = """
const tick = (n, delay) => send({ type: "tick", n }, { delay, id: "tick" + n });
export default createMachine({
  id: "race", predictableActionArguments: true, initial: "live", context: { public: { ticks: [] } },
  states: { live: { on: {
    arm: { actions: [tick(1, 1000), tick(2, 1000), tick(3, 2000)] },
    tick: { actions: assign({ public: (c, e) => ({ ticks: [...c.public.ticks, e.n] }) }) },
  } } },
});
"""
# A window that stays open: `go` starts a fetch that the test holds, then commits its result.
GATED = """
export default createMachine({
  id: "gated", predictableActionArguments: true, initial: "idle", context: { public: { got: null } },
  states: {
    idle: { on: { go: "waiting" } },
    waiting: { invoke: {
      src: () => fetch("URL").then((r) => r.json()),
      onDone: { target: "done", actions: assign({ public: (c, e) => ({ got: e.data }) }) },
    } },
    done: {},
  },
});
"""


def _settings(pg_url: str, node_id: str, tmp_path: Path) -> Settings:
    return Settings(
        database=tmp_path / f"{node_id}.db",  # unused: the database is pg_url
        database_url=pg_url,
        node_id=node_id,
        lease_ttl_s=3.0,
        fetch=FetchPolicy(allow_private=True, timeout_s=10),
        shutdown_grace_s=2.0,
        workers=2,
        db_pool_size=5,
    )


@dataclass
class Nodes:
    a: DurableEngine
    b: DurableEngine
    org: str
    clock: FakeClock


@pytest.fixture
async def nodes(pg_url: str, tmp_path: Path, bundler: Bundler) -> AsyncIterator[Nodes]:
    """Nodes ``a`` and ``b`` on one database and one fake clock, and an org."""
    clock = FakeClock()
    a = DurableEngine(_settings(pg_url, "a", tmp_path), clock=clock, bundler=bundler)
    b = DurableEngine(_settings(pg_url, "b", tmp_path), clock=clock, bundler=bundler)
    await a.start()
    try:
        await b.start()
        try:
            yield Nodes(a, b, await a.store.create_org("o", clock.now_ms()), clock)
        finally:
            await b.stop()
    finally:
        await a.stop()


async def _deploy(engine: DurableEngine, org: str, slug: str, body: str) -> None:
    await engine.store.create_machine(org, slug, [], engine.clock.now_ms())
    source = HEADER[4] + ALLOW_ALL + body
    await engine.instances.create_version(org, slug, Upload("machine.ts", source.encode(), xstate_major=4))


async def _history(pg_url: str, slug: str) -> dict[str, list[dict]]:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT i.name, t.seq, t.event_json FROM instances i JOIN transitions t ON t.instance_id = i.id"
            " JOIN machines m ON m.id = i.machine_id WHERE m.slug = $1 ORDER BY i.name, t.seq",
            slug,
        )
    finally:
        await conn.close()
    history: dict[str, list[dict]] = collections.defaultdict(list)
    for row in rows:
        history[row["name"]].append(json.loads(row["event_json"]))
    return history


async def _timer_rows(pg_url: str) -> int:
    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetchval("SELECT COUNT(*) FROM timers")
    finally:
        await conn.close()


@pytest.mark.parametrize("claims", ["held", "lapsing"])
async def test_two_nodes_deliver_every_due_timer_exactly_once(
    nodes: Nodes, pg_url: str, monkeypatch: pytest.MonkeyPatch, claims: str
):
    """``held``: claims work, the nodes take disjoint timers. ``lapsing``: every claim lapses at once,
    as if each node were too slow for its claims, so both nodes take the same timers: the lease and the
    deletion of the timer row in the delivering round must still let only one delivery through."""
    a, b, org, clock = nodes.a, nodes.b, nodes.org, nodes.clock
    # Small claim batches: the two loops take turns claiming instead of one taking every due timer.
    monkeypatch.setattr(timers, "CLAIM_BATCH", 8)
    if claims == "lapsing":
        a.timers.claim_ttl_ms = b.timers.claim_ttl_ms = 0
    attempts: dict[int, list[tuple[str, str]]] = collections.defaultdict(list)
    """timer id -> (node, outcome) of every delivery attempt"""
    for node in (a, b):
        deliver = node.instances.deliver_timer

        async def recorded(row, deliver=deliver, node_id=node.node_id):
            outcome = await deliver(row)
            attempts[row.id].append((node_id, outcome))
            return outcome

        monkeypatch.setattr(node.instances, "deliver_timer", recorded)
    await _deploy(a, org, "race", RACE)
    names = [f"i{k}" for k in range(INSTANCES)]
    for k, name in enumerate(names):  # each node arms half: both loops learn the next due time
        node = (a, b)[k % 2]
        await node.instances.create(org, "race", name)
        await node.instances.send_event(org, "race", name, "arm", {})
    assert await _timer_rows(pg_url) == 3 * INSTANCES
    first_due = clock.now_ms() + 1000

    async def both_loops_wait_for_the_first_due_time() -> bool:
        sleeping = [when for when, _, waiter in clock._sleepers if not waiter.done()]
        return sleeping.count(first_due) >= 2

    await eventually(both_loops_wait_for_the_first_due_time, within_s=60)  # so both wake at once
    clock.advance(1000)
    await asyncio.sleep(0.05)
    clock.advance(1000)

    async def all_delivered() -> bool:
        return a.timers.delivered + b.timers.delivered >= 3 * INSTANCES and await _timer_rows(pg_url) == 0

    await eventually(all_delivered, within_s=60)

    async def no_delivery_running() -> bool:  # with no timer row left, none can start
        return not a.timers._tasks and not b.timers._tasks

    await eventually(no_delivery_running, within_s=60)  # a late second delivery would have shown now
    history = await _history(pg_url, "race")
    assert sorted(history) == sorted(names)
    for name in names:
        ticks = sorted(event["n"] for event in history[name] if event["type"] == "tick")
        assert ticks == [1, 2, 3], f"{name}: ticks {ticks} (each timer must fire exactly once)"
    assert a.timers.delivered + b.timers.delivered == 3 * INSTANCES
    assert a.timers.delivered > 0 and b.timers.delivered > 0, (a.timers.delivered, b.timers.delivered)
    assert a.timers.dropped == b.timers.dropped == 0
    assert len(attempts) == 3 * INSTANCES
    for timer_id, tries in attempts.items():
        assert [outcome for _, outcome in tries].count("delivered") == 1, (timer_id, tries)
    raced = sum(len({node for node, _ in tries}) > 1 for tries in attempts.values())
    if claims == "held":
        assert raced == 0, "a claimed timer was taken by the other node"
    else:
        assert raced > 0, "the claims did not lapse: no timer was taken by both nodes"
    print(f"\ndelivered a={a.timers.delivered} b={b.timers.delivered}; taken by both nodes: {raced}")
    assert await _timer_rows(pg_url) == 0


async def test_a_lease_taken_over_fences_its_old_holder(nodes: Nodes, pg_url: str):
    """Store level: a round carrying the old lease is refused although the instance did not move on
    (its seq check alone would let it through); the new holder commits the same round."""
    a, b, org = nodes.a, nodes.b, nodes.org
    assert a.leases is not None and b.leases is not None
    await _deploy(a, org, "race", RACE)
    await a.instances.create(org, "race", "x")
    machine_id = await a.store.machine_id(org, "race")
    stale = await a.leases.acquire(machine_id, "x", within_s=1)
    with pytest.raises(Unavailable):
        await b.leases.acquire(machine_id, "x", within_s=0.2)  # a holds it
    conn = await asyncpg.connect(pg_url)
    try:  # a stalls past its lease's lifetime
        await conn.execute("UPDATE instance_leases SET expires_ms = 0 WHERE machine_id = $1 AND name = 'x'", machine_id)
    finally:
        await conn.close()
    fresh = await b.leases.acquire(machine_id, "x", within_s=1)
    assert (fresh.node_id, fresh.epoch) == ("b", stale.epoch + 1)

    row = await a.store.find_instance(machine_id, "x")
    assert row is not None

    def round_with(lease: Lease) -> RoundCommit:
        event = {"type": "tick", "n": 7}
        public = {"ticks": [7]}
        return RoundCommit(
            instance_id=row.id,
            expected_seq=row.seq,
            persisted=row.persisted,
            version_id=row.version_id,
            transitions=[
                TransitionRecord(row.seq + 1, row.ts + 1, row.state, event, public, [], False, {"public": public})
            ],
            context={"public": public},
            org_id=org,
            machine_slug="race",
            instance_name="x",
            lease=lease,
        )

    with pytest.raises(Conflict, match="taken over"):
        await a.store.commit_round(round_with(stale), a.clock.now_ms())
    after = await a.store.find_instance(machine_id, "x")
    assert after is not None and after.seq == row.seq, "the fenced round changed the instance"
    # The old holder's release does not free the new holder's lease.
    await a.leases.release(stale)
    with pytest.raises(Unavailable):
        await a.leases.acquire(machine_id, "x", within_s=0.2)
    await b.store.commit_round(round_with(fresh), b.clock.now_ms())
    events = (await _history(pg_url, "race"))["x"]
    assert [e["type"] for e in events] == ["xstate.init", "tick"], events
    # Creating an instance is fenced the same way: a stale lease on a new name inserts nothing.
    gone = await a.leases.acquire(machine_id, "y", within_s=1)
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("UPDATE instance_leases SET expires_ms = 0 WHERE machine_id = $1 AND name = 'y'", machine_id)
    finally:
        await conn.close()
    await b.leases.acquire(machine_id, "y", within_s=1)
    first = round_with(gone)
    first.transitions = [TransitionRecord(1, 1, "live", {"type": "xstate.init"}, {"ticks": []}, [], False, {})]
    first.instance_name = "y"
    with pytest.raises(Conflict, match="taken over"):
        await a.store.insert_instance(machine_id, "y", first, a.clock.now_ms())
    assert await a.store.find_instance(machine_id, "y") is None


async def test_a_window_open_when_its_lease_was_taken_cannot_commit(nodes: Nodes, pg_url: str):
    """Engine level: node a's window waits on a service; meanwhile its lease lapses and b takes it.
    When the service answers, a's round (the instance is still at the seq it read) must not commit.
    The request itself is answered with what its own round committed (`go` is in the history)."""
    a, b, org = nodes.a, nodes.b, nodes.org
    assert b.leases is not None
    asked, answer = asyncio.Event(), asyncio.Event()

    async def gate(_request: web.Request) -> web.Response:
        asked.set()
        await answer.wait()
        return web.json_response({"answer": 42})

    app = web.Application()
    app.router.add_get("/gate", gate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        await _deploy(a, org, "gated", GATED.replace("URL", f"http://127.0.0.1:{port}/gate"))
        await a.instances.create(org, "gated", "x")
        sent = asyncio.ensure_future(a.instances.send_event(org, "gated", "x", "go", {}))
        await asyncio.wait_for(asked.wait(), 30)  # a's window committed `waiting` and holds the lease
        machine_id = await a.store.machine_id(org, "gated")
        before = await a.store.find_instance(machine_id, "x")
        assert before is not None and before.state == "waiting"
        conn = await asyncpg.connect(pg_url)
        try:  # a's node stalls past its lease's lifetime; b takes the instance over
            await conn.execute(
                "UPDATE instance_leases SET expires_ms = 0 WHERE machine_id = $1 AND name = 'x'", machine_id
            )
        finally:
            await conn.close()
        await b.leases.acquire(machine_id, "x", within_s=1)
        answer.set()
        answered = await asyncio.wait_for(sent, 30)
        assert answered.state == "waiting"
        after = await a.store.find_instance(machine_id, "x")
        assert after is not None
        assert (after.seq, after.state) == (before.seq, "waiting"), "a fenced node committed"
        events = (await _history(pg_url, "gated"))["x"]
        assert [e["type"] for e in events] == ["xstate.init", "go"]
    finally:
        answer.set()
        await runner.cleanup()


SENDER = """
import { sendTo, spawnPersistentInstance } from "@statebacked/machine";
const receiver = () => ({ type: "statebacked.instance", id: "r", machineName: "receiver", machineInstanceName: "r" });
export default createMachine({
  id: "sender", predictableActionArguments: true, initial: "idle", context: { kids: [] },
  states: { idle: { on: {
    ping: { actions: sendTo(receiver, { type: "hello" }) },
    spawn: { actions: assign({ kids: () => [spawnPersistentInstance({ machineName: "receiver", machineInstanceName: "kid" })] }) },
  } } },
});
"""
RECEIVER = """
export default createMachine({
  id: "receiver", predictableActionArguments: true, initial: "idle", context: { public: { hellos: 0 } },
  states: { idle: { on: { hello: { actions: assign({ public: (c) => ({ hellos: c.public.hellos + 1 }) }) } } } },
});
"""


def _stall_first_delivery(nodes: Nodes, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the first round that delivers a timer (on whichever node; a message's or a spawn's round
    too) lose its lease just before it commits, as if its node had stalled past the lease's lifetime
    while the other node took the instance over (and then released it). Returns the ids of the
    timers so fenced."""
    fenced: list[int] = []

    async def steal(lease: Lease, thief: DurableEngine) -> Lease:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(
                "UPDATE instance_leases SET expires_ms = 0 WHERE machine_id = $1 AND name = $2",
                lease.machine_id,
                lease.name,
            )
        finally:
            await conn.close()
        assert thief.leases is not None
        return await thief.leases.acquire(lease.machine_id, lease.name, within_s=1)

    for victim, thief in ((nodes.a, nodes.b), (nodes.b, nodes.a)):
        commit_round, insert_instance = victim.store.commit_round, victim.store.insert_instance

        async def fenced_commit(commit: RoundCommit, now_ms: int, original=commit_round, thief=thief) -> None:
            if commit.delete_timer_id is None or fenced or commit.lease is None:
                return await original(commit, now_ms)
            fenced.append(commit.delete_timer_id)
            taken = await steal(commit.lease, thief)
            try:
                return await original(commit, now_ms)
            finally:
                await thief.leases.release(taken)

        async def fenced_insert(
            machine_id: int,
            name: str,
            commit: RoundCommit,
            now_ms: int,
            parent=None,
            original=insert_instance,
            thief=thief,
        ) -> int:
            if commit.delete_timer_id is None or fenced or commit.lease is None:
                return await original(machine_id, name, commit, now_ms, parent=parent)
            fenced.append(commit.delete_timer_id)
            taken = await steal(commit.lease, thief)
            try:
                return await original(machine_id, name, commit, now_ms, parent=parent)
            finally:
                await thief.leases.release(taken)

        monkeypatch.setattr(victim.store, "commit_round", fenced_commit)
        monkeypatch.setattr(victim.store, "insert_instance", fenced_insert)
    return fenced


async def _settled(nodes: Nodes, pg_url: str) -> None:
    """Every timer delivered or dropped; the fake clock moves on so that retries come due."""

    async def no_timers() -> bool:
        nodes.clock.advance(1000)
        nodes.a.timers.wake()
        nodes.b.timers.wake()
        await asyncio.sleep(0.02)
        return await _timer_rows(pg_url) == 0

    await eventually(no_timers, within_s=30)


async def test_a_timer_whose_delivery_was_fenced_is_delivered_again(
    nodes: Nodes, pg_url: str, monkeypatch: pytest.MonkeyPatch
):
    """The node delivering an instance's own timer loses the lease before its round commits: the
    round is refused, and the timer is delivered later (retried), exactly once."""
    a, org = nodes.a, nodes.org
    await _deploy(a, org, "race", RACE)
    await a.instances.create(org, "race", "x")
    fenced = _stall_first_delivery(nodes, pg_url, monkeypatch)
    await a.instances.send_event(org, "race", "x", "arm", {})
    await _settled(nodes, pg_url)
    assert len(fenced) == 1
    ticks = sorted(e["n"] for e in (await _history(pg_url, "race"))["x"] if e["type"] == "tick")
    assert ticks == [1, 2, 3]


@pytest.mark.parametrize("event", ["ping", "spawn"], ids=["message", "spawn"])
async def test_a_message_whose_delivery_was_fenced_is_delivered_again(
    nodes: Nodes, pg_url: str, monkeypatch: pytest.MonkeyPatch, event: str
):
    """The same for a message between instances and for the spawn of a persistent child (timer rows
    with a target, wire-api 7.6): the receiver's round is refused, the message must still arrive (the
    child must still be created), exactly once."""
    a, org = nodes.a, nodes.org
    await _deploy(a, org, "sender", SENDER)
    await _deploy(a, org, "receiver", RECEIVER)
    await a.instances.create(org, "receiver", "r")
    await a.instances.create(org, "sender", "s")
    fenced = _stall_first_delivery(nodes, pg_url, monkeypatch)
    await a.instances.send_event(org, "sender", "s", event, {})
    await _settled(nodes, pg_url)
    assert len(fenced) == 1
    logs = [line["text"] for line in await a.store.logs(org, limit=100)]
    receiver = "r" if event == "ping" else "kid"
    history = (await _history(pg_url, "receiver")).get(receiver)
    assert history is not None, f"the child was never created; the sender's logs: {logs}"
    hellos = [e for e in history if e["type"] == "hello"]
    assert len(hellos) == (event == "ping"), f"the message was lost; the sender's logs: {logs}"
