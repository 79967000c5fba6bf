"""Durable events/s with 1, 2 and 3 statehost nodes on one PostgreSQL, and the same load on SQLite.

    python -m bench.nodes [--quick] [--out FILE] [--db-pool-size N] [--no-random]

Everything runs on this machine: one throwaway PostgreSQL server (tests/pg.py: fsync and
synchronous_commit on, its data in $TMPDIR, else /tmp) holding a fresh database per node count,
the ``statehost serve`` nodes (bench/servers.py), a SQLite node (``statehost.db`` in a temporary
folder under bench/, WAL, synchronous=FULL), and this load driver. All setups run side by side and
the measured rounds alternate between them (as in bench/load.py), so a drift of the machine hits
all alike.

For N nodes on one database the first node starts first (it bootstraps the org and writes
admin.json), then the rest together; the toggle machine (XState 5, as in bench.load's W2) is
deployed through the first. Each setup gets 1,000 instances of it, created through the node that
will serve them, then bench.load's W2 workload: 64 concurrent clients with keep-alive, each sending
``toggle`` events to random instances, a request at a time. The clients are spread round-robin over
the nodes (client c talks to node c mod N), and:

- **hash routing** (a load balancer routing by instance name, as server/leases.py advises): an
  instance's events always go to one node, crc32(name) mod N, so client c picks among the instances
  of its node; no node waits for another's lease;
- **random routing** (2 and 3 nodes): client c picks among all instances, so an instance gets events
  through every node, and a node must wait while another node's settle window holds the instance's
  lease (server/leases.py).

A request counts when it answers HTTP 200, which statehost sends after the commit: durable
events/s is those over wall time. At the end every database's transitions are counted against the
200s (one row per create and per event), so the rate is of commits that are there. Latency is
measured here, from sending a request to having read the whole answer; p50 and p99 over all rounds.

What bounds it is read from the CPU time each process used during the rounds of a setup (from
/proc): the setup's statehost nodes, postgres (the postmaster and all its backends), this driver,
and the rest of the machine (the idle setups included), over the wall time of those rounds: "cores"
is CPU seconds per second, and ``os.cpu_count()`` of them is everything. The nodes' main threads
are their event loops (the sandboxes run on worker threads). A note adds what PostgreSQL did per
request (pg_stat_database: transactions, rows written; pg_stat_wal: WAL flushes), over the run.

``--quick`` (tests/test_bench_nodes_smoke.py): small sizes, about 30 s, nothing written.
``--out FILE`` writes the report (Markdown) to FILE and the raw numbers to FILE with ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from client import StatehostClient, sign_token
from tests.pg import PostgresCluster, find_bin_dir, missing_binaries

from .common import ROOT, machine_info, machine_line, percentile
from .load import (
    FIXTURES,
    QUICK,
    Figure,
    RequestFailed,
    Sizes,
    Target,
    _busy_cpu_s,
    _fmt,
    _read_only,
    _source_revision,
    pool,
)
from .servers import StatehostServer

MACHINE = "toggle"  # bench.load's W2 machine: fixtures/machines/toggle/v5
NODE_COUNTS = (1, 2, 3)
PG_STATS_FLUSH_S = 11.0
"""PostgreSQL 15 backends flush their statistics after 10 s idle (PGSTAT_IDLE_INTERVAL)."""


# -- CPU time from /proc ---------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int, thread: int | None = None) -> list[str] | None:
    """/proc/<pid>/stat's (or one thread's) fields after the command name (field 3, the state,
    first); None if gone."""
    try:
        text = Path(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_cpu_s(pid: int) -> float:
    """CPU seconds of a process (all its threads) and of the children it has waited for."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # utime, stime, cutime, cstime are fields 14-17 of stat: 11-14 here
    return sum(int(f) for f in fields[11:15]) / _TICK


def main_thread_cpu_s(pid: int) -> float:
    """CPU seconds of a process's main thread: statehost's event loop (aiohttp, asyncpg, the engine's
    scheduling); sandboxes run on worker threads."""
    fields = _stat(pid, pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_s(parent: int) -> float:
    """CPU seconds of ``parent`` and of its live children (postgres: the postmaster and its backends;
    a backend that exited is in the postmaster's children time)."""
    total = process_cpu_s(parent)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                total += process_cpu_s(int(entry.name))
    return total


def driver_cpu_s() -> float:
    """CPU seconds of this process (the load driver)."""
    t = os.times()
    return t.user + t.system


def background_cores(seconds: float = 1.0) -> float:
    """Cores the rest of the machine keeps busy while this process sleeps: other work in the way."""
    busy, own = _busy_cpu_s(), driver_cpu_s()
    time.sleep(seconds)
    return max(0.0, (_busy_cpu_s() - busy) - (driver_cpu_s() - own)) / seconds


# -- setups -------------------------------------------------------------------------------------------


@dataclass
class CpuUse:
    """CPU seconds used by each part during a setup's measured rounds, and their wall time."""

    nodes: list[float]
    loops: list[float]
    """The nodes' main threads (their event loops)."""
    postgres: float = 0.0
    driver: float = 0.0
    machine: float = 0.0
    seconds: float = 0.0

    def _combine(self, other: CpuUse, sign: int) -> CpuUse:
        return CpuUse(
            nodes=[a + sign * b for a, b in zip(self.nodes, other.nodes, strict=True)],
            loops=[a + sign * b for a, b in zip(self.loops, other.loops, strict=True)],
            postgres=self.postgres + sign * other.postgres,
            driver=self.driver + sign * other.driver,
            machine=self.machine + sign * other.machine,
            seconds=self.seconds + sign * other.seconds,
        )

    def __add__(self, other: CpuUse) -> CpuUse:
        return self._combine(other, 1)

    def __sub__(self, other: CpuUse) -> CpuUse:
        return self._combine(other, -1)

    @property
    def other(self) -> float:
        """The rest of the machine: idle setups, the kernel's own threads, anything else running."""
        return max(0.0, self.machine - sum(self.nodes) - self.postgres - self.driver)

    def cores(self, cpu_s: float) -> float:
        return cpu_s / self.seconds if self.seconds else 0.0


@dataclass
class Deployment:
    """Nodes on one database, the machine deployed, instances created, routes to them."""

    label: str
    servers: list[StatehostServer]
    database: str = ""
    """PostgreSQL: the database's name on the cluster; SQLite: ""."""
    targets: list[Target] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    answered: int = 0
    """Requests answered 200 (creates and events, warm-up included): the transitions that must exist."""

    @property
    def name(self) -> str:
        nodes = len(self.servers)
        return f"{self.label}, {nodes} node{'s' if nodes > 1 else ''}"

    def node_of(self, name: str) -> int:
        return zlib.crc32(name.encode()) % len(self.targets)


@dataclass
class Row:
    """One line of the table: a deployment driven with one routing."""

    deployment: Deployment
    routing: str  # "hash" or "random"
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    seconds: float = 0.0
    cpu: CpuUse | None = None
    round_rates: list[float] = field(default_factory=list)
    """Durable events/s of each round (how much the rounds vary)."""

    @property
    def label(self) -> str:
        return self.deployment.name

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


class NodesBench:
    def __init__(self, folder: Path, sizes: Sizes, pg: PostgresCluster, pool_size: int, random_routing: bool) -> None:
        self.folder = folder
        self.sizes = sizes
        self.pg = pg
        self.pool_size = pool_size
        self.random_routing = random_routing
        self.deployments: list[Deployment] = []
        self.rows: list[Row] = []
        self.postmaster = 0

    # -- setup ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.postmaster = int((self.pg.data_dir / "postmaster.pid").read_text().split()[0])
        sqlite_node = StatehostServer(self.folder / "sqlite")
        self.deployments.append(Deployment("sqlite", [sqlite_node]))
        for n in NODE_COUNTS:
            database = f"nodes{n}"
            url = self.pg.create_database(database)
            extra = ["--database-url", url, "--db-pool-size", str(self.pool_size)]
            servers = [
                StatehostServer(self.folder / f"pg{n}-{k}", extra=[*extra, "--node-id", f"pg{n}-{k}"])
                for k in range(1, n + 1)
            ]
            self.deployments.append(Deployment("postgres", servers, database))
        for d in self.deployments:
            for server in d.servers:
                server.data_dir.mkdir(mode=0o700)
            # the first node bootstraps the shared database (org, admin, admin.json); then the rest
            await d.servers[0].start()
            await asyncio.gather(*(server.start() for server in d.servers[1:]))
            headers = await deploy_toggle(d.servers[0])
            d.targets = [Target(s, headers, f"{d.label}{len(d.servers)}-{k}") for k, s in enumerate(d.servers, 1)]
        for d in self.deployments:
            self.rows.append(Row(d, "hash"))
        if self.random_routing:
            self.rows.extend(Row(d, "random") for d in self.deployments if len(d.servers) > 1)

    async def stop(self) -> None:
        for d in self.deployments:
            for server in d.servers:
                await server.stop()

    @contextlib.asynccontextmanager
    async def sessions(self, d: Deployment) -> AsyncIterator[list[aiohttp.ClientSession]]:
        """One keep-alive session per node."""
        async with contextlib.AsyncExitStack() as stack:
            yield [
                await stack.enter_async_context(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
                for _ in d.targets
            ]

    async def create_instances(self, d: Deployment) -> float:
        """The instances, each created through the node hash routing sends it to; creates/s."""
        d.names = [f"n-{k}" for k in range(self.sizes.w2_instances)]
        async with self.sessions(d) as sessions:

            async def job(k: int) -> None:
                node = d.node_of(d.names[k])
                await d.targets[node].create(sessions[node], MACHINE, d.names[k])

            started = time.perf_counter()
            await pool(len(d.names), self.sizes.create_concurrency, job)
            seconds = time.perf_counter() - started
        d.answered += len(d.names)
        return len(d.names) / seconds

    # -- the load -------------------------------------------------------------------------------------

    async def drive(self, row: Row, seconds: float) -> tuple[list[float], int, float]:
        """W2 for ``seconds``: (latencies of the 200s in ms, failed requests, wall seconds)."""
        d = row.deployment
        nodes = len(d.targets)
        mine = [[name for name in d.names if d.node_of(name) == k] for k in range(nodes)]
        latencies: list[float] = []
        failed = 0
        async with self.sessions(d) as sessions:
            started = time.perf_counter()
            deadline = started + seconds

            async def client(c: int) -> None:
                nonlocal failed
                node = c % nodes
                choices = mine[node] if row.routing == "hash" else d.names
                rng = random.Random(c)
                while time.perf_counter() < deadline:
                    try:
                        ms, _ = await d.targets[node].send(sessions[node], MACHINE, rng.choice(choices), "toggle")
                    except RequestFailed:
                        failed += 1
                    else:
                        latencies.append(ms)

            await asyncio.gather(*(client(c) for c in range(self.sizes.w2_clients)))
            elapsed = time.perf_counter() - started
        d.answered += len(latencies)
        return latencies, failed, elapsed

    def cpu_now(self, row: Row) -> CpuUse:
        return CpuUse(
            nodes=[process_cpu_s(s.pid) for s in row.deployment.servers],
            loops=[main_thread_cpu_s(s.pid) for s in row.deployment.servers],
            postgres=tree_cpu_s(self.postmaster),
            driver=driver_cpu_s(),
            machine=_busy_cpu_s(),
        )

    async def measure(self, row: Row) -> None:
        before, started = self.cpu_now(row), time.perf_counter()
        latencies, failed, seconds = await self.drive(row, self.sizes.w2_seconds)
        after, wall = self.cpu_now(row), time.perf_counter() - started
        used = after - before
        used.seconds = wall
        row.cpu = used if row.cpu is None else row.cpu + used
        row.latencies.extend(latencies)
        row.failed += failed
        row.seconds += seconds
        row.round_rates.append(len(latencies) / seconds)

    async def run(self) -> dict[str, Any]:
        creates = {}
        for d in self.deployments:
            creates[d.name] = await self.create_instances(d)
        for row in self.rows:  # warm-up, off the clock: every node's connections and sandboxes
            await self.drive(row, self.sizes.w2_seconds / 4)
        for n in range(self.sizes.w2_rounds):
            for row in self.rows:
                await self.measure(row)
                print(f"round {n + 1}: {row.label} ({row.routing}): {row.round_rates[-1]:,.0f} events/s", flush=True)
        for d in self.deployments:
            found = self.count_transitions(d)
            if found != d.answered:
                raise RuntimeError(f"{d.name}: {found} transitions for {d.answered} requests answered 200")
        return {"creates_per_s": creates, "postgres_per_request": await self.postgres_work()}

    def count_transitions(self, d: Deployment) -> int:
        if d.database:
            return int(self.pg.sql("SELECT COUNT(*) FROM transitions", d.database).strip())
        conn = _read_only(d.servers[0].database)
        try:
            (n,) = conn.execute("SELECT COUNT(*) FROM transitions").fetchone()
            return int(n)
        finally:
            conn.close()

    async def postgres_work(self) -> dict[str, dict[str, float]]:
        """What PostgreSQL did per request answered, over the whole run (so creates, warm-up and the
        nodes' upkeep are in it too): each database's transactions (reads included) and rows
        written, and the cluster's WAL flushes. Backends report their counters when they have
        been idle a while: wait for that first."""
        await asyncio.sleep(PG_STATS_FLUSH_S)
        out = {}
        answered = 0
        for d in self.deployments:
            if d.database:
                answered += d.answered
                row = self.pg.sql(
                    "SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database"
                    f" WHERE datname = '{d.database}'"
                )
                commits, inserted, updated = (int(x) / d.answered for x in row.strip().split("|"))
                out[d.name] = {"transactions": commits, "inserted": inserted, "updated": updated}
        out["cluster"] = {"wal_flushes": int(self.pg.sql("SELECT wal_sync FROM pg_stat_wal").strip()) / answered}
        return out


async def deploy_toggle(server: StatehostServer) -> dict[str, str]:
    """The toggle machine through ``server``'s admin; the headers of a key-signed end-user token
    (the key is in the database: every node sharing it accepts the token)."""
    admin = server.credentials()
    async with StatehostClient(server.url, admin["adminToken"], org_id=admin["orgId"]) as client:
        await client.machines.create(MACHINE)
        source = (FIXTURES / "toggle" / "v5" / "machine.ts").read_bytes()
        await client.versions.create(MACHINE, source, filename="machine.ts", make_current=True, xstate_major=5)
        key = await client.keys.create("bench-nodes", use="production")
    token = sign_token(key["id"], key["key"], {"sub": "bench"})
    return {"authorization": f"Bearer {token}", "content-type": "application/json"}


# -- the report ---------------------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    """The throughput table: one line per setup and routing."""
    sqlite_rate = next(r.rate for r in rows if r.deployment.label == "sqlite")
    lines = [
        "| setup | routing | durable events/s | p50 ms | p99 ms | ratio to sqlite | failed | events/s by round |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        figure = Figure.of(r.latencies)
        routing = r.routing if len(r.deployment.servers) > 1 else "-"
        lines.append(
            f"| {r.label} | {routing} | {_fmt(r.rate, '/s')} | {_fmt(figure.median, 'ms')} |"
            f" {_fmt(figure.p99, 'ms')} | {r.rate / sqlite_rate:.2f}x | {r.failed} |"
            f" {' / '.join(_fmt(x, '/s') for x in r.round_rates)} |"
        )
    return "\n".join(lines)


def cpu_table(rows: Sequence[Row]) -> str:
    """Where the CPU went during each setup's measured rounds: cores used (CPU s per s) and CPU ms
    per durable event."""
    cpus = os.cpu_count() or 1
    lines = [
        f"| setup | routing | cores (of {cpus}): statehost nodes | their main threads | postgres | load driver |"
        " other | idle | CPU ms per event: statehost | postgres | all |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        cpu = r.cpu
        assert cpu is not None
        nodes = f"{cpu.cores(sum(cpu.nodes)):.2f}"
        if len(cpu.nodes) > 1:
            nodes += " (" + " + ".join(f"{cpu.cores(s):.2f}" for s in cpu.nodes) + ")"
        loops = " + ".join(f"{cpu.cores(s):.2f}" for s in cpu.loops)
        pg = r.deployment.label == "postgres"
        ms = 1000 / len(r.latencies) if r.latencies else 0.0
        routing = r.routing if len(r.deployment.servers) > 1 else "-"
        idle = max(0.0, cpus - cpu.cores(cpu.machine))
        lines.append(
            f"| {r.label} | {routing} | {nodes} | {loops} | {f'{cpu.cores(cpu.postgres):.2f}' if pg else '-'} |"
            f" {cpu.cores(cpu.driver):.2f} | {cpu.cores(cpu.other):.2f} | {idle:.2f} |"
            f" {sum(cpu.nodes) * ms:.2f} | {f'{cpu.postgres * ms:.2f}' if pg else '-'} | {cpu.machine * ms:.2f} |"
        )
    return "\n".join(lines)


def raw(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [
        {
            "setup": r.label,
            "routing": r.routing,
            "nodes": len(r.deployment.servers),
            "events": len(r.latencies),
            "failed": r.failed,
            "seconds": r.seconds,
            "per_s": r.rate,
            "per_s_by_round": r.round_rates,
            "median_ms": statistics.median(r.latencies),
            "p90_ms": percentile(r.latencies, 0.9),
            "p99_ms": percentile(r.latencies, 0.99),
            "max_ms": max(r.latencies),
            "cpu_s": {**asdict(r.cpu), "other": r.cpu.other} if r.cpu else None,
        }
        for r in rows
    ]


async def run(sizes: Sizes, pool_size: int, random_routing: bool) -> tuple[NodesBench, dict[str, Any]]:
    folder = Path(tempfile.mkdtemp(prefix="statehost-nodes-", dir=ROOT / "bench"))
    try:
        with PostgresCluster() as pg:
            bench = NodesBench(folder, sizes, pg, pool_size, random_routing)
            try:
                await bench.start()
                extra = await bench.run()
                extra["postgres_disk"] = machine_info(pg.data_dir)["disk"]
                extra["postgres_version"] = pg.sql("SHOW server_version").strip()
            finally:
                await bench.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return bench, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, nothing written: checks that it works")
    parser.add_argument("--out", type=Path, help="write the report (Markdown) here, and the raw numbers beside it")
    parser.add_argument("--db-pool-size", type=int, default=10, help="PostgreSQL connections per node (default 10)")
    parser.add_argument("--no-random", action="store_true", help="skip the random-routing rows")
    args = parser.parse_args()
    if find_bin_dir() is None:
        sys.exit(f"bench.nodes: {missing_binaries()}")
    sizes = QUICK if args.quick else Sizes()
    machine = {**machine_info(), "source": _source_revision()}
    print(machine_line(machine), flush=True)
    before = background_cores()
    print(f"before the run, other processes kept {before:.2f} cores busy", flush=True)
    started = time.perf_counter()
    bench, extra = asyncio.run(run(sizes, args.db_pool_size, not args.no_random))
    seconds = time.perf_counter() - started
    text = f"{table(bench.rows)}\n\n{cpu_table(bench.rows)}"
    notes = (
        f"PostgreSQL {extra['postgres_version']}, data on {extra['postgres_disk']}; SQLite on {machine['disk']}."
        f" {sizes.w2_instances:,} instances, {sizes.w2_clients} clients,"
        f" {sizes.w2_rounds} rounds of {sizes.w2_seconds:g} s per setup, alternating;"
        f" PostgreSQL connections per node: {args.db_pool_size}."
        f" Before the run, other processes kept {before:.2f} cores busy."
    )
    work = extra["postgres_per_request"]
    notes += "\nPostgreSQL per request answered (creates, warm-up and the nodes' upkeep included): " + "; ".join(
        f"{key}: {w['transactions']:.1f} transactions, {w['inserted']:.2f} rows inserted, {w['updated']:.2f} updated"
        for key, w in work.items()
        if key != "cluster"
    )
    notes += f"; WAL flushes (whole cluster): {work['cluster']['wal_flushes']:.2f}."
    print()
    print(text)
    print(f"\n{notes}\n{seconds:.0f} s")
    if args.out is None or args.quick:
        return
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.out.write_text(
        f"# bench.nodes, {when}\n\n{machine_line(machine)}; source {machine['source']}\n\n{text}\n\n{notes}\n"
    )
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {
                "when": when,
                "machine": machine,
                "seconds": seconds,
                "background_cores_before": before,
                "db_pool_size": args.db_pool_size,
                "sizes": {k: v for k, v in asdict(sizes).items() if k.startswith(("w2_", "create_"))},
                "rows": raw(bench.rows),
                **extra,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
