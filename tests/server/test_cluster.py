"""Several statehost nodes on one PostgreSQL database, in one process (two real apps on loopback):
commits relayed to another node's subscribers, one instance driven through both nodes, a dead
node's instance recovered by the other, and the health endpoint on both backends.

The crash test with real processes and SIGKILL is tests/cluster/."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bench.hostile import COUNTER  # the ordinary counter machine (context.public.seen)
from runtime import Limits
from server.app import FEED, create_app
from server.cluster import CommitFeed
from server.config import Settings
from server.store import Store
from tests.pg import PostgresCluster, find_bin_dir, missing_binaries
from tests.server.api_support import Api, api_client
from tests.support import eventually, need_tool

STUCK = b"""import { createMachine } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
export default createMachine({
  id: "s", predictableActionArguments: true, initial: "idle",
  states: {
    idle: { on: { go: "working" } },
    working: { invoke: { src: () => new Promise(() => {}), onError: "failed" } },
    failed: {},
  },
});
"""


async def test_a_subscriber_on_one_node_gets_every_transition_committed_on_the_other_in_order(nodes):
    a, b = nodes
    await a.deploy("c", COUNTER)
    status, _ = await a.call("POST", "/machines/c", body={"slug": "i1"})
    assert status == 200
    ws = await b.client.ws_connect(f"/rt?token={b.admin_token}")
    await ws.send_json(
        {"type": "subscribe-to-instance", "requestId": "r", "machineName": "c", "machineInstanceName": "i1"}
    )
    first = json.loads((await ws.receive(timeout=60)).data)
    assert first["publicContext"] == {"seen": []}
    for n in range(30):
        status, _ = await a.call("POST", "/machines/c/i/i1/events", body={"event": {"type": "add", "n": n}})
        assert status == 200
    seen = []
    while len(seen) < 30:
        update = json.loads((await ws.receive(timeout=60)).data)
        seen.append(update["publicContext"]["seen"][-1])
    assert seen == list(range(30))  # every transition, in commit order, none twice
    assert b.engine.store.shared
    await ws.close()


async def test_one_instance_driven_through_both_nodes_keeps_one_gap_free_history(nodes):
    a, b = nodes
    await a.deploy("c", COUNTER)
    await a.call("POST", "/machines/c", body={"slug": "hot"})

    async def send(api: Api, n: int) -> int:
        status, _ = await api.call("POST", "/machines/c/i/hot/events", body={"event": {"type": "add", "n": n}})
        return status

    statuses = await asyncio.gather(*(send(a if n % 2 else b, n) for n in range(40)))
    assert statuses == [200] * 40
    store = a.engine.store
    row = await store.find_instance(await store.machine_id(a.org_id, "c"), "hot")
    assert row is not None and row.seq == 41
    history = await store.transitions(row.id, limit=100)
    assert [t.seq for t in history] == list(range(1, 42))
    assert sorted(t.event["n"] for t in history[1:]) == list(range(40))
    assert sorted(row.public_context["seen"]) == list(range(40))

    # each node took the instance's lease for its windows; the epochs of both count up one history.
    # A request is answered when its round commits, before its window ends: the last window releases
    # the lease just after the last answer.
    async def released() -> bool:
        leases = await store._read("SELECT node_id, epoch, expires_ms FROM instance_leases")
        assert len(leases) == 1 and leases[0]["epoch"] >= 2
        return bool(leases[0]["expires_ms"] == 0)

    await eventually(released, within_s=60)


async def test_a_dead_nodes_instance_gets_its_cut_off_services_error_events_from_another_node(
    tmp_path: Path, pg_url: str, bundler
):
    short = Limits(settle_window_ms=500)
    async for a in api_client(tmp_path, bundler, pg_url):
        await a.deploy("s", STUCK)
        await a.call("POST", "/machines/s", body={"slug": "i1"})
        status, state = await a.call("POST", "/machines/s/i/i1/events", body={"event": "go"})
        assert status == 200 and state["state"] == "working"
    # The service is still running when node A is gone (the settle window outlived the request):
    # make it look like A died holding the lease, with the service in flight.
    b_settings = Settings(database_url=pg_url, node_id="node-b", workers=2, lease_ttl_s=0.3, limits=short)
    async with TestClient(TestServer(create_app(b_settings, bundler=bundler))) as client:
        b = Api(client, a.admin_token, a.org_id)
        store = b.engine.store
        machine_id = await store.machine_id(a.org_id, "s")
        row = await store.find_instance(machine_id, "i1")
        assert row is not None
        if not row.persisted.get("inflight"):
            pytest.fail(f"the test needs the service recorded as in flight: {row.persisted}")

        async def orphan(tx):
            await tx.execute(
                "INSERT INTO instance_leases (machine_id, name, node_id, epoch, expires_ms) VALUES (?, ?, 'dead', 9, 1)"
                " ON CONFLICT (machine_id, name) DO UPDATE SET node_id = 'dead', epoch = 9, expires_ms = 1",
                (machine_id, "i1"),
            )

        await store.write(orphan)

        async def failed() -> bool:
            found = await store.find_instance(machine_id, "i1")
            return found is not None and found.state == "failed"

        await eventually(failed, within_s=60)
        history = await store.transitions(row.id, limit=10)
        assert history[-1].event["type"] == "error.platform.s.working:invocation[0]"


async def test_health_reports_the_node_its_database_and_leases(api: Api):
    async with api.client.get("/health") as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "ok" and body["node"] == api.engine.node_id
    assert body["database"]["reachable"] is True and body["database"]["latency_ms"] >= 0
    if api.engine.store.shared:
        assert body["database"]["kind"] == "postgres"
        assert body["leases"] == {"held": 0, "all_nodes": 0, "acquired": 0, "waited": 0}
    else:
        assert body["database"]["kind"] == "sqlite" and "leases" not in body


async def _held_by(api: Api, slug: str, name: str) -> bool:
    """Whether ``api``'s node holds the lease of instance ``name`` (its window is open)."""
    store = api.engine.store
    rows = await store._read(
        "SELECT l.node_id, l.expires_ms FROM instance_leases l JOIN machines m ON m.id = l.machine_id"
        " WHERE m.slug = ? AND l.name = ?",
        (slug, name),
    )
    return len(rows) == 1 and rows[0]["node_id"] == api.engine.node_id and rows[0]["expires_ms"] > 0


SLOW = b"""import { createMachine, assign } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
export default createMachine({
  id: "w", predictableActionArguments: true, initial: "idle", context: { public: { pings: 0 } },
  states: {
    idle: { on: { go: "working" } },
    working: { invoke: { src: () => new Promise((r) => setTimeout(() => r(1), DELAY)), onDone: "done" } },
    done: { on: { ping: { actions: assign({ public: (c) => ({ pings: c.public.pings + 1 }) }) } } },
  },
});
"""


async def test_a_window_longer_than_the_lease_keeps_it_and_the_other_node_waits(tmp_path: Path, pg_url: str, bundler):
    # A's lease lasts 2 s and is renewed every 0.67 s while its 6 s window runs: three lifetimes.
    # (A renewal may be late by most of a lifetime on a busy machine and still count.)
    async for a in api_client(tmp_path, bundler, pg_url, lease_ttl_s=2.0):
        settings = Settings(database_url=pg_url, node_id="node-b", workers=2, lease_ttl_s=2.0)
        async with TestClient(TestServer(create_app(settings, bundler=bundler))) as client:
            b = Api(client, a.admin_token, a.org_id)
            await a.deploy("w", SLOW.replace(b"DELAY", b"6000"))
            await a.call("POST", "/machines/w", body={"slug": "i1"})
            go = asyncio.ensure_future(a.call("POST", "/machines/w/i/i1/events", body={"event": "go"}))

            async def a_holds_it(a: Api = a) -> bool:  # A's window is open and holds the lease
                return await _held_by(a, "w", "i1")

            await eventually(a_holds_it, within_s=60)
            status, state = await b.call("POST", "/machines/w/i/i1/events", body={"event": "ping"})
            assert status == 200, state
            # B waited for A's window (past several lease lifetimes): the ping reached "done"
            assert state["state"] == "done" and state["publicContext"] == {"pings": 1}
            assert (await go)[0] == 200
            store = a.engine.store
            row = await store.find_instance(await store.machine_id(a.org_id, "w"), "i1")
            assert row is not None
            events = [t.event["type"] for t in await store.transitions(row.id)]
            assert events[1:] == ["go", "done.invoke.w.working:invocation[0]", "ping"]
            assert b.engine.leases is not None and b.engine.leases.waited >= 1


async def test_a_node_that_lost_its_lease_mid_window_commits_nothing_more_and_answers_what_it_did_commit(
    tmp_path: Path, pg_url: str, bundler
):
    async for a in api_client(tmp_path, bundler, pg_url):
        settings = Settings(database_url=pg_url, node_id="node-b", workers=2)
        async with TestClient(TestServer(create_app(settings, bundler=bundler))) as client:
            b = Api(client, a.admin_token, a.org_id)
            await a.deploy("w", SLOW.replace(b"DELAY", b"1500"))
            await a.call("POST", "/machines/w", body={"slug": "i1"})
            go = asyncio.ensure_future(a.call("POST", "/machines/w/i/i1/events", body={"event": "go"}))
            store = a.engine.store
            machine_id = await store.machine_id(a.org_id, "w")

            async def working(a: Api = a, store: Store = store, machine_id: int = machine_id) -> bool:
                # A's window committed `working` and holds the lease
                found = await store.find_instance(machine_id, "i1")
                return found is not None and found.state == "working" and await _held_by(a, "w", "i1")

            await eventually(working, within_s=60)

            async def lapse(tx):  # as if node A had paused for longer than its lease
                # 0, not a past time: A is not really paused, and its heartbeat renews any of its
                # leases that has not ended (expires_ms > 0) -- it must not win that race against B.
                await tx.execute("UPDATE instance_leases SET expires_ms = 0")

            await store.write(lapse)
            status, state = await b.call("POST", "/machines/w/i/i1/events", body={"event": "ping"})
            assert status == 200 and state["state"] == "working"  # B took the lease at once
            # A's service finished after that: its round fails the fence; "go" itself was committed
            status, state = await go
            assert status == 200 and state["state"] == "working", state
            row = await store.find_instance(await store.machine_id(a.org_id, "w"), "i1")
            assert row is not None and row.state == "working"
            assert [t.event["type"] for t in await store.transitions(row.id)][1:] == ["go"]


async def test_a_database_outage_fails_requests_with_503_and_the_node_continues_when_it_returns(
    tmp_path: Path, bundler, caplog: pytest.LogCaptureFixture
):
    """docs/deployment.md, "the database is unreachable": nothing is acknowledged that was not
    committed, the node answers 503 (not 500), /health says so, timers wait; then it continues."""
    if find_bin_dir() is None:
        need_tool("PostgreSQL", missing_binaries())
    with PostgresCluster() as pg:
        url = pg.create_database("outage")
        async for api in api_client(tmp_path, bundler, url):
            await api.deploy("c", COUNTER)
            await api.call("POST", "/machines/c", body={"slug": "i1"})
            status, _ = await api.call("POST", "/machines/c/i/i1/events", body={"event": {"type": "add", "n": 0}})
            assert status == 200
            await asyncio.to_thread(pg.halt)
            status, body = await api.call("POST", "/machines/c/i/i1/events", body={"event": {"type": "add", "n": 1}})
            assert status == 503 and body["code"] == "unavailable", body
            assert "database is unreachable" in body["error"]
            async with api.client.get("/health") as response:
                assert response.status == 503
                health = await response.json()
            assert health["status"] == "unavailable" and health["database"]["reachable"] is False

            async def timer_loop_failed() -> bool:  # it polls the shared database meanwhile, and fails
                return any("looking for due timers failed" in r.getMessage() for r in caplog.records)

            await eventually(timer_loop_failed, within_s=60)
            await asyncio.to_thread(pg.resume)

            async def answers(api: Api = api) -> bool:
                status, _ = await api.call("POST", "/machines/c/i/i1/events", body={"event": {"type": "add", "n": 2}})
                return status == 200

            await eventually(answers, within_s=60)
            async with api.client.get("/health") as response:
                assert response.status == 200
            feed = api.client.app[FEED]

            async def listening(feed: CommitFeed = feed) -> bool:  # the hints listener, lost with the server
                return feed.listening

            await eventually(listening, within_s=60)
            store = api.engine.store
            row = await store.find_instance(await store.machine_id(api.org_id, "c"), "i1")
            assert row is not None
            # n=1 was never acknowledged, and nothing of it was stored
            assert row.public_context["seen"] == [0, 2]
            assert api.engine._timer_task is not None and not api.engine._timer_task.done()
