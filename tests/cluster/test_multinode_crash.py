"""Three ``statehost serve`` processes on one PostgreSQL database, SIGKILLed at random moments under
load and restarted: nothing acknowledged is lost or applied twice, histories stay gap-free, every
timer that comes due fires exactly once (whichever node set it, claimed it, or died holding it), and
real-time subscribers on any node see every transition, in order, whichever node committed it.

The run, in phases:

1. Chaos. Clients send events to all three nodes at random: one hot instance (every node writes it,
   so its lease changes hands all the time) and ``INSTANCES`` others; a fifth of the events set a
   timer. Node 1 is never killed in this phase, so its subscribers must see every transition of the
   phase. Nodes 2 and 3 are SIGKILLed ``KILLS`` times, one at a time at random moments, and
   restarted with a new node id; then both at once, so that node 1 alone takes over the leases and
   timer claims of two dead nodes. Their subscribers reconnect after every restart.
2. Settle. The load stops; every timer is delivered; every subscriber catches up with the database.
3. Whole-cluster crash. Every instance gets a timer (half of them due 5 s later: pending by construction), and all three nodes are SIGKILLed while the
   timers are pending (some may be claimed or being delivered), then all restarted; the timers fire
   and the nodes stop gracefully (SIGTERM, exit 0).

Then the database is read directly (asyncpg) and checked: every acknowledged event is in its
instance's history exactly once, unacknowledged ones at most once, ``seq`` runs 1..N with no gap per
instance, each instance's context lists exactly its history's events in history order (no window
ever started from a stale state), every timer fired exactly once and after the event that set it, no
timer row is left. Every subscriber connection received an unbroken run of consecutive transitions
(checked against the history's ``seq`` and ``ts``), and node 1's subscribers received all of phase 1
and 2 on a single connection.

``STATEHOST_CHAOS_SEED`` picks the random choices (the timing of the processes is not reproducible).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import itertools
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from bench.common import free_port

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20
"""Single kills of node 2 or 3 in phase 1; two more (both at once) end it and three the test."""
INSTANCES = 12
HOT = "hot"
HOT_SHARE = 0.4
ARM_SHARE = 0.2
CLIENTS = 8
LEASE_TTL_S = 1.5
SETTLE_WINDOW_MS = 1_000
TIMER_DELAY_MS = 400
LATE_TIMER_DELAY_MS = 5_000
"""Phase 3's ``arm_late``: timers that cannot fire before the whole-cluster crash, however slow the
machine, so that it always leaves timers pending (its ``arm`` timers may fire, be claimed or not)."""
SETTLE_S = 120.0
"""How long timers may take to settle: a timer claimed by a node that died is delivered once its
claim lapses (the settle window plus three lease lifetimes, 5.5 s here), then polled (1 s)."""
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)
SEED = os.environ.get("STATEHOST_CHAOS_SEED", "statehost-chaos")

# Every event is handled (one history row each) and appends its id to the context; `arm` also sets
# a timer whose event names the event that set it, so each timer is found in the history.
MACHINE = f"""
import {{ createMachine, assign, send }} from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
const note = assign({{
  public: (c, e) => ({{ count: c.public.count + 1, last: e.id }}),
  ids: (c, e) => [...c.ids, e.id],
}});
export default createMachine({{
  id: "chaos", predictableActionArguments: true, initial: "live",
  context: {{ public: {{ count: 0, last: null }}, ids: [] }},
  states: {{ live: {{ on: {{
    inc: {{ actions: note }},
    arm: {{ actions: [note, send((c, e) => ({{ type: "tick", id: "t" + e.id }}), {{ delay: {TIMER_DELAY_MS} }})] }},
    arm_late: {{ actions: [note, send((c, e) => ({{ type: "tick", id: "t" + e.id }}), {{ delay: {LATE_TIMER_DELAY_MS} }})] }},
    tick: {{ actions: note }},
  }} }} }},
}});
""".encode()
SLUG = "chaos"
NAMES = [HOT, *(f"i{k}" for k in range(INSTANCES))]


class ServeNode:
    """One node's slot: a fixed port; every start is a new process with a new node id and data dir."""

    def __init__(self, index: int, database_url: str, tmp: Path) -> None:
        self.index = index
        self.database_url = database_url
        self.tmp = tmp
        self.port = free_port()
        self.starts = 0
        self.node_id = ""
        self.data_dir = tmp
        self.process: asyncio.subprocess.Process | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def log_tail(self, lines: int = 40) -> str:
        log = self.data_dir / "serve.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return f"\n--- {self.node_id} log tail ---\n" + "\n".join(text.splitlines()[-lines:])

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.starts += 1
        self.node_id = f"node{self.index}-{self.starts}"
        self.data_dir = self.tmp / self.node_id
        self.data_dir.mkdir()
        with (self.data_dir / "serve.log").open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--database-url",
                self.database_url,
                "--node-id",
                self.node_id,
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--lease-ttl-s",
                str(LEASE_TTL_S),
                "--settle-window-ms",
                str(SETTLE_WINDOW_MS),
                "--workers",
                "2",
                "--db-pool-size",
                "8",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 60
        while True:
            if self.process.returncode is not None:
                raise AssertionError(f"{self.node_id} exited ({self.process.returncode}){self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(f"{self.base}/health", timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200 and (await response.json())["node"] == self.node_id:
                        return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.node_id} did not answer /health within 60 s{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL
        await self.process.wait()

    async def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 30)


@dataclass
class Ledger:
    """What the clients sent, and which of it was acknowledged (HTTP 200)."""

    sent: dict[str, tuple[str, str]] = field(default_factory=dict)
    """event id -> (instance, event type)"""
    acked: set[str] = field(default_factory=set)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    server_errors: list[str] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def send(
        self, session: aiohttp.ClientSession, node: ServeNode, headers: dict[str, str], instance: str, kind: str
    ) -> bool:
        event_id = f"e{next(self.ids)}"
        self.sent[event_id] = (instance, kind)
        url = f"{node.base}/machines/{SLUG}/i/{instance}/events"
        try:
            async with session.post(
                url, json={"event": {"type": kind, "id": event_id}}, headers=headers, timeout=REQUEST_TIMEOUT
            ) as response:
                body = await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.outcomes[type(exc).__name__] += 1
            return False
        self.outcomes[str(response.status)] += 1
        if response.status == 200:
            self.acked.add(event_id)
            return True
        if response.status >= 500 and response.status != 503:  # 503: the instance stayed busy; try again
            self.server_errors.append(f"{node.node_id} {instance} {event_id}: {response.status} {body}")
        return False


class Watcher:
    """A real-time subscriber on one node's /rt; reconnects whenever its node goes away. Each
    connection's updates are kept apart: (count, ts), count being the number of events applied,
    i.e. the transition's seq - 1."""

    def __init__(self, node: ServeNode, instance: str, token: str) -> None:
        self.node = node
        self.instance = instance
        self.token = token
        self.spans: list[list[tuple[int, int]]] = []
        self.refusals: list[Any] = []

    @property
    def label(self) -> str:
        return f"subscriber of {self.instance} on node {self.node.index}"

    async def run(self, session: aiohttp.ClientSession) -> None:
        subscribe = {
            "type": "subscribe-to-instance",
            "requestId": "w",
            "machineName": SLUG,
            "machineInstanceName": self.instance,
        }
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.ws_connect(f"{self.node.base}/rt?token={self.token}") as ws:
                    await ws.send_json(subscribe)
                    span: list[tuple[int, int]] = []
                    self.spans.append(span)
                    async for message in ws:
                        if message.type is not aiohttp.WSMsgType.TEXT:
                            break
                        data = json.loads(message.data)
                        if data.get("type") != "instance-update":
                            self.refusals.append(data)
                            break
                        span.append((data["publicContext"]["count"], data["ts"]))
            await asyncio.sleep(0.1)

    def last_count(self) -> int | None:
        return self.spans[-1][-1][0] if self.spans and self.spans[-1] else None


async def _deploy(session: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> None:
    async with session.post(f"{base}/machines", json={"slug": SLUG}, headers=headers) as response:
        assert response.status == 201, await response.text()
    async with session.post(f"{base}/machines/{SLUG}/v?gzip", headers=headers) as response:
        assert response.status == 200, await response.text()
        provisional = await response.json()
    form = aiohttp.FormData()
    for key, value in provisional["codeUploadFields"].items():
        form.add_field(key, value)
    form.add_field("content-type", "application/javascript")
    form.add_field("content-encoding", "gzip")
    form.add_field("file", gzip.compress(MACHINE), filename="machine.ts", content_type="application/javascript")
    async with session.post(provisional["codeUploadUrl"], data=form) as response:
        assert response.status == 204, await response.text()
    version = provisional["machineVersionId"]
    body = {"clientInfo": "chaos", "makeCurrent": True}
    async with session.put(f"{base}/machines/{SLUG}/v/{version}", json=body, headers=headers) as response:
        assert response.status == 200, await response.text()


async def _client(
    session: aiohttp.ClientSession,
    nodes: list[ServeNode],
    headers: dict[str, str],
    ledger: Ledger,
    rng: random.Random,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        instance = HOT if rng.random() < HOT_SHARE else f"i{rng.randrange(INSTANCES)}"
        kind = "arm" if rng.random() < ARM_SHARE else "inc"
        if not await ledger.send(session, rng.choice(nodes), headers, instance, kind):
            await asyncio.sleep(0.05)  # a dead node refuses at once: do not spin


async def _heads(conn: asyncpg.Connection) -> dict[str, int]:
    return {r["name"]: r["seq"] for r in await conn.fetch("SELECT name, seq FROM instances")}


async def _orphans(conn: asyncpg.Connection, node_id: str) -> collections.Counter[str]:
    """What a node that was just killed left behind: live leases, timer claims."""
    leases = await conn.fetchval(
        "SELECT COUNT(*) FROM instance_leases WHERE node_id = $1"
        " AND expires_ms > (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
        node_id,
    )
    claims = await conn.fetchval("SELECT COUNT(*) FROM timers WHERE claimed_by = $1", node_id)
    return collections.Counter(leases=leases, claims=claims)


async def _settle_timers(conn: asyncpg.Connection, nodes: list[ServeNode]) -> float:
    """Wait until every timer was delivered; how long that took."""
    started = time.monotonic()
    while (left := await conn.fetchval("SELECT COUNT(*) FROM timers")) > 0:
        if time.monotonic() - started > SETTLE_S:
            rows = await conn.fetch("SELECT id, instance_id, event_json, due_ms, attempts, claimed_by FROM timers")
            tails = "".join(node.log_tail(15) for node in nodes)
            raise AssertionError(f"{left} timers still pending after {SETTLE_S:.0f} s: {rows[:10]}{tails}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def _caught_up(conn: asyncpg.Connection, watchers: list[Watcher], within_s: float = 60.0) -> dict[str, int]:
    """Wait until every subscriber's current connection has the last transition of its instance;
    the instances' seq then."""
    deadline = time.monotonic() + within_s
    while True:
        heads = await _heads(conn)
        behind = [w for w in watchers if w.last_count() != heads[w.instance] - 1]
        if not behind:
            return heads
        if time.monotonic() > deadline:
            raise AssertionError(
                "subscribers did not catch up with the database: "
                + ", ".join(f"{w.label} at {w.last_count()} of {heads[w.instance] - 1}" for w in behind)
            )
        await asyncio.sleep(0.05)


def _check_history(rows: list[asyncpg.Record], ledger: Ledger) -> tuple[dict[str, list[int]], int, int]:
    """The database's history against what the clients sent: per instance, ts by seq - 1; how many
    unacknowledged events were committed; how many timers fired."""
    by_instance: dict[str, list[asyncpg.Record]] = collections.defaultdict(list)
    for row in rows:
        by_instance[row["name"]].append(row)
    assert sorted(by_instance) == sorted(NAMES), "instances missing from the database"
    seen: collections.Counter[str] = collections.Counter()
    ts_by_count: dict[str, list[int]] = {}
    armed = fired = 0
    for name, history in by_instance.items():
        seqs = [r["seq"] for r in history]
        assert seqs == list(range(1, len(seqs) + 1)), f"{name}: seq is not 1..N: {seqs[:20]}..."
        assert history[0]["head"] == seqs[-1], f"{name}: instance row at seq {history[0]['head']}, history {seqs[-1]}"
        ts = [r["ts"] for r in history]
        assert all(a < b for a, b in itertools.pairwise(ts)), f"{name}: ts not strictly increasing"
        ts_by_count[name] = ts
        events = [json.loads(r["event_json"]) for r in history]
        assert events[0]["type"] == "xstate.init"
        ids = [event["id"] for event in events[1:]]
        context = json.loads(history[0]["context_json"])
        # Each window started from the latest committed state: the context lists the whole history.
        assert context["ids"] == ids, f"{name}: the context's event ids differ from the history's"
        assert context["public"]["count"] == len(ids)
        seq_of: dict[str, int] = {}
        for seq, event in enumerate(events[1:], start=2):
            event_id = event["id"]
            seen[event_id] += 1
            seq_of[event_id] = seq
            if event["type"] == "tick":
                continue
            assert ledger.sent[event_id] == (name, event["type"]), f"{event_id} landed in {name}"
        for event in events[1:]:
            if event["type"] in ("arm", "arm_late"):
                armed += 1
                tick = "t" + event["id"]
                assert tick in seq_of, f"{name}: the timer set by {event['id']} never fired"
                assert seq_of[tick] > seq_of[event["id"]], f"{name}: {tick} fired before {event['id']}"
            elif event["type"] == "tick":
                fired += 1
                assert event["id"][1:] in seq_of, f"{name}: {event['id']} fired for an event not in the history"
    twice = sorted(event_id for event_id, times in seen.items() if times > 1)
    assert twice == [], f"events in a history more than once: {twice[:10]}"
    lost = sorted(ledger.acked - set(seen), key=lambda e: int(e[1:]))
    assert lost == [], f"acknowledged events missing from the history: {[(e, ledger.sent[e]) for e in lost[:10]]}"
    assert armed == fired
    return ts_by_count, len(set(seen) - ledger.acked - {e for e in seen if e.startswith("t")}), fired


def _check_span(watcher: Watcher, span: list[tuple[int, int]], ts_by_count: list[int]) -> None:
    """One connection's updates: consecutive transitions of the history, each with its ts."""
    for k, (count, ts) in enumerate(span):
        assert count < len(ts_by_count), f"{watcher.label}: count {count} is beyond the history"
        assert ts == ts_by_count[count], (
            f"{watcher.label}: update {count} has ts {ts}, the history {ts_by_count[count]}"
        )
        if k:
            assert count == span[k - 1][0] + 1, (
                f"{watcher.label} (node {watcher.node.node_id}): after transition {span[k - 1][0]} came {count}"
            )


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_random_sigkills_of_nodes_on_one_database_lose_nothing(pg_url: str, tmp_path: Path):
    rng = random.Random(SEED)
    nodes = [ServeNode(index, pg_url, tmp_path) for index in (1, 2, 3)]
    ledger = Ledger()
    kills = 0
    orphans = collections.Counter[str]()
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        conn = await asyncpg.connect(pg_url)
        try:
            # Node 1 first: on an empty database it bootstraps the org and writes admin.json.
            await nodes[0].start(session)
            credentials = json.loads((nodes[0].data_dir / "admin.json").read_text())
            await asyncio.gather(nodes[1].start(session), nodes[2].start(session))
            assert not (nodes[1].data_dir / "admin.json").exists(), "a second node bootstrapped the database again"
            assert not (nodes[2].data_dir / "admin.json").exists(), "a third node bootstrapped the database again"
            token = credentials["adminToken"]
            headers = {"authorization": f"Bearer {token}"}
            await _deploy(session, nodes[0].base, headers)
            for k, name in enumerate(NAMES):  # created through every node
                async with session.post(
                    f"{nodes[k % 3].base}/machines/{SLUG}", json={"slug": name}, headers=headers
                ) as response:
                    assert response.status == 200, await response.text()

            watchers = [Watcher(nodes[0], name, token) for name in (HOT, "i0", "i1", "i2")]
            watchers += [Watcher(nodes[1], name, token) for name in (HOT, "i0", "i3")]
            watchers += [Watcher(nodes[2], name, token) for name in (HOT, "i1", "i4")]
            tasks += [asyncio.create_task(w.run(session)) for w in watchers]
            await _caught_up(conn, watchers)  # every subscriber has its instance's current state

            # -- phase 1: chaos ---------------------------------------------------------------------
            stop = asyncio.Event()
            clients = [asyncio.create_task(_client(session, nodes, headers, ledger, rng, stop)) for _ in range(CLIENTS)]
            tasks += clients
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                victim = rng.choice(nodes[1:])
                await victim.kill()
                kills += 1
                orphans += await _orphans(conn, victim.node_id)
                await asyncio.sleep(rng.uniform(0.0, 1.0))
                await victim.start(session)
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            await asyncio.gather(nodes[1].kill(), nodes[2].kill())  # node 1 alone takes over both
            kills += 2
            orphans += await _orphans(conn, nodes[1].node_id) + await _orphans(conn, nodes[2].node_id)
            await asyncio.sleep(LEASE_TTL_S)
            await asyncio.gather(nodes[1].start(session), nodes[2].start(session))
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)
            chaos_s = time.monotonic() - started

            # -- phase 2: settle ----------------------------------------------------------------------
            settle_s = await _settle_timers(conn, nodes)
            heads = await _caught_up(conn, watchers)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks.clear()

            # -- phase 3: every node dies with timers pending, all restart ------------------------------
            armed = await asyncio.gather(
                *(
                    ledger.send(session, rng.choice(nodes), headers, name, "arm" if k % 2 else "arm_late")
                    for k, name in enumerate(NAMES)
                )
            )
            assert any(armed[0::2]), f"no arm_late event was acknowledged: {ledger.outcomes}"
            # arm's timers are due 400 ms after their events (they may fire, or be claimed, before the
            # crash); arm_late's 5 s after theirs: pending at the crash by construction.
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            await asyncio.gather(*(node.kill() for node in nodes))
            kills += 3
            pending = await conn.fetchval("SELECT COUNT(*) FROM timers")
            assert pending > 0, "the whole-cluster crash came after every timer fired"
            await nodes[0].start(session)
            await asyncio.gather(nodes[1].start(session), nodes[2].start(session))
            final_settle_s = await _settle_timers(conn, nodes)
            codes = await asyncio.gather(*(node.terminate() for node in nodes))
            assert codes == [0, 0, 0], f"SIGTERM exit codes {codes}" + "".join(n.log_tail() for n in nodes)

            # -- the checks -------------------------------------------------------------------------------
            rows = await conn.fetch(
                "SELECT i.name, i.seq AS head, i.context_json, t.seq, t.ts, t.event_json"
                " FROM instances i JOIN transitions t ON t.instance_id = i.id ORDER BY i.name, t.seq"
            )
            assert await conn.fetchval("SELECT COUNT(*) FROM timers") == 0
            hot_epoch = await conn.fetchval("SELECT epoch FROM instance_leases WHERE name = $1", HOT)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for node in nodes:
                if node.alive:
                    await node.kill()
            await conn.close()

    print(
        f"\nchaos: seed {SEED!r}, {kills} SIGKILLs, {len(ledger.sent)} events sent, {len(ledger.acked)} acknowledged,"
        f" outcomes {dict(ledger.outcomes)}; the kills orphaned {orphans['leases']} leases and {orphans['claims']}"
        f" timer claims, the last one left {pending} timers pending; {hot_epoch} leases of {HOT!r} taken;"
        f" phase 1 {chaos_s:.1f} s, timers settled in {settle_s:.1f} s, and in {final_settle_s:.1f} s after the"
        f" whole-cluster crash; total {time.monotonic() - started:.1f} s"
    )
    assert kills >= 10
    assert len(ledger.acked) > 300, f"the load was too light to mean anything: {dict(ledger.outcomes)}"
    assert ledger.server_errors == [], f"server errors: {ledger.server_errors[:10]}"
    ts_by_count, unacked_committed, fired = _check_history(rows, ledger)
    updates = sum(len(span) for w in watchers for span in w.spans)
    print(f"chaos: {unacked_committed} unacknowledged events committed, {fired} timers fired, {updates} updates pushed")
    for watcher in watchers:
        assert watcher.refusals == [], f"{watcher.label} was refused: {watcher.refusals}"
        for span in watcher.spans:
            _check_span(watcher, span, ts_by_count[watcher.instance])
    for watcher in watchers[:4]:  # node 1 lived through phases 1 and 2: one connection, every transition
        assert len(watcher.spans) == 1, f"{watcher.label} was disconnected"
        (span,) = watcher.spans
        assert span[0][0] == 0, f"{watcher.label} subscribed late"
        assert span[-1][0] == heads[watcher.instance] - 1
        assert [count for count, _ in span] == list(range(span[0][0], heads[watcher.instance]))
    reconnects = sum(len(w.spans) for w in watchers[4:])
    assert reconnects > len(watchers[4:]), "nodes 2 and 3's subscribers never reconnected"
