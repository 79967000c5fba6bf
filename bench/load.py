"""Load benchmark: statehost against a hand-rolled Node.js + XState + SQLite server, side by side.

    python -m bench.load [--quick] [--only W1,W2,...] [--profile DIR [--profile-option=--gil]]
                         [--statehost-command CMD] [--candidate-command CMD]

Starts both servers as subprocesses on loopback, each on its own data in a temporary folder on
the repository's disk: ``statehost serve`` and ``bench/baseline/server.mjs`` (README there). Both
get the same HTTP requests, with the same ``Authorization`` header (a key-signed end-user token;
the baseline ignores it), from one aiohttp session with keep-alive per workload and server.
Latency is measured here, client-side, from sending a request to having read its whole answer.
Throughput and latency workloads alternate between the servers in rounds (statehost, baseline,
statehost, ...) so that a drift of the machine hits both alike.

- raw SQLite single-row commits/s, WAL, synchronous=FULL, same disk (the physical reference);
- W1 one hot instance (toggle, XState 5 and 4): sequential events, latency and events/s;
- W4 a machine whose event invokes ``fetch`` of a stub served by this process (fetcher): the
  answer comes after the promise settled (checked: the state is ``loaded`` with the fetched item);
- W3 cold: the first requests after new code is deployed (statehost: a new machine version
  uploaded through the API; baseline: its process restarted), and the first event to an existing
  instance after a restart of the server on the same data;
- W6 memory: server RSS with 1,000 and with 100,000 idle instances (the extra ones copied in SQL,
  see bench/multiply.py), and the RSS added per warm sandbox (after events to N more instances);
- W2 1,000 instances, 64 concurrent clients (random instances): durable events/s and latency; then
  the same on 200 of them (all of which fit among statehost's 256 parked sandboxes);
- W5 (statehost only) 10,000 timers due within one second, all set before the first falls due:
  delivery lag = the delivered transition's ``ts`` minus the timer's due time; then a lone timer on
  the idle server, 30 times one after another (200 ms each), its lag the same way.

Prints one table and writes it to bench/results/load.md, with the raw numbers and the machine in
bench/results/load.json (``--quick``: small sizes, nothing written; it checks that it works).
``--profile DIR`` records statehost with py-spy during W1, W2 and W5's deliveries (``pip install py-spy``; see
bench/profile.py). For A/B runs of a candidate change, ``--candidate-command`` puts a second
statehost, started by another command (e.g. a script that patches the change in and calls
``server.cli.main``), in the baseline's column, alternating rounds with the first (W1, W2, W4).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from client import StatehostClient, sign_token

from .common import ROOT, free_port, machine_info, machine_line, percentile
from .engine_throughput import raw_sqlite
from .multiply import count_instances, multiply_baseline, multiply_statehost
from .profile import Profiler
from .servers import BaselineServer, ServerProcess, StatehostServer

RESULTS_MD = ROOT / "bench" / "results" / "load.md"
RESULTS_JSON = ROOT / "bench" / "results" / "load.json"
FIXTURES = ROOT / "fixtures" / "machines"

# Served on both servers under the same names (bench/baseline/server.mjs MACHINES).
MACHINES = {"toggle": ("toggle", 5), "toggle-v4": ("toggle", 4), "fetcher": ("fetcher", 5)}

# W5's machine (statehost only: the baseline has no durable timers). The delay comes from the
# context, so that every instance can fall due at a chosen instant however long creating them takes.
TIMER_MACHINE = """\
import { createMachine } from "xstate";

export const allowRead = () => true;
export const allowWrite = () => true;

export default createMachine<{ public: { delay: number } }>(
  {
    id: "timer",
    predictableActionArguments: true,
    context: { public: { delay: 0 } },
    initial: "waiting",
    states: { waiting: { after: { DELAY: "fired" } }, fired: {} },
  },
  { delays: { DELAY: (ctx) => ctx.public.delay } },
);
"""


@dataclass(frozen=True)
class Sizes:
    w1_rounds: int = 3
    w1_seconds: float = 2.0
    w4_rounds: int = 3
    w4_seconds: float = 2.0
    w3_deploys: int = 8
    w3_restarts: int = 5
    w6_instances: int = 1000
    w6_copies: int = 99
    w6_warm: int = 256
    w2_instances: int = 1000
    w2_parked_instances: int = 200
    w2_clients: int = 64
    w2_rounds: int = 3
    w2_seconds: float = 4.0
    w5_timers: int = 10_000
    w5_lone: int = 30
    w5_lone_delay_ms: int = 200
    raw_seconds: float = 3.0
    create_concurrency: int = 64


QUICK = Sizes(
    w1_rounds=1,
    w1_seconds=0.4,
    w4_rounds=1,
    w4_seconds=0.4,
    w3_deploys=1,
    w3_restarts=1,
    w6_instances=100,
    w6_copies=9,
    w6_warm=20,
    w2_instances=100,
    w2_parked_instances=50,
    w2_rounds=1,
    w2_seconds=1.0,
    w5_timers=200,
    w5_lone=5,
    raw_seconds=0.5,
)

EVENTS_PER_FETCHER = 40

WORKLOADS = ("raw", "W1", "W4", "W3", "W6", "W2", "W5")


# -- measurements --------------------------------------------------------------------------------


@dataclass
class Measured:
    """Latencies (ms) of requests and the wall time they took, over one or more rounds."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    client_cpu_s: float = 0.0
    """CPU time this (driver) process used meanwhile: its share of the 2 cores is not the servers'."""

    def add(self, latencies: Sequence[float], seconds: float, client_cpu_s: float = 0.0) -> None:
        self.latencies.extend(latencies)
        self.seconds += seconds
        self.client_cpu_s += client_cpu_s

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


@dataclass
class Figure:
    median: float
    p99: float | None = None

    @staticmethod
    def of(samples: Sequence[float]) -> Figure:
        return Figure(statistics.median(samples), percentile(samples, 0.99))


@dataclass
class Row:
    workload: str
    metric: str
    unit: str
    statehost: Figure
    baseline: Figure | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline.median <= 0 or self.statehost.median < 0:
            return None
        return self.statehost.median / self.baseline.median


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "/s" or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| workload | metric | statehost median | p99 | baseline median | p99 | statehost/baseline |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        b = r.baseline
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        metric = r.metric if r.unit == "/s" else f"{r.metric} ({r.unit})"
        lines.append(
            f"| {r.workload} | {metric} | {_fmt(r.statehost.median, r.unit)} |"
            f" {_fmt(r.statehost.p99, r.unit)} | {_fmt(b.median if b else None, r.unit)} |"
            f" {_fmt(b.p99 if b else None, r.unit)} | {ratio} |"
        )
    return "\n".join(lines)


# -- HTTP --------------------------------------------------------------------------------------------


def _body(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class RequestFailed(RuntimeError):
    pass


@dataclass
class Target:
    """One server as the load sees it: its base URL and the headers every request carries."""

    server: ServerProcess
    headers: dict[str, str]
    name: str
    """Its column in the table: "statehost" or "baseline" (with --candidate-command, a second statehost)."""

    async def call(
        self, session: aiohttp.ClientSession, method: str, path: str, body: bytes | None = None
    ) -> tuple[float, Any]:
        """One request: (milliseconds until its whole answer was read, the parsed answer)."""
        started = time.perf_counter()
        async with session.request(method, self.server.url + path, data=body, headers=self.headers) as response:
            raw = await response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RequestFailed(f"{self.server.name}: {method} {path} -> {response.status} {raw[:500]!r}")
        return elapsed, json.loads(raw)

    async def create(
        self, session: aiohttp.ClientSession, machine: str, slug: str, context: dict[str, Any] | None = None
    ) -> tuple[float, Any]:
        body: dict[str, Any] = {"slug": slug}
        if context is not None:
            body["context"] = context
        return await self.call(session, "POST", f"/machines/{machine}", _body(body))

    async def send(
        self, session: aiohttp.ClientSession, machine: str, slug: str, event: str | dict[str, Any]
    ) -> tuple[float, Any]:
        return await self.call(session, "POST", f"/machines/{machine}/i/{slug}/events", _body({"event": event}))


@contextlib.asynccontextmanager
async def sessions(targets: Sequence[Target]) -> AsyncIterator[dict[str, aiohttp.ClientSession]]:
    """One keep-alive session per server for one workload."""
    async with contextlib.AsyncExitStack() as stack:
        opened = {}
        for target in targets:
            connector = aiohttp.TCPConnector(limit=0, force_close=False)
            opened[target.name] = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        yield opened


async def pool(count: int, concurrency: int, job: Callable[[int], Awaitable[None]]) -> None:
    """Run job(0..count-1) with at most ``concurrency`` at a time."""
    queue = iter(range(count))

    async def worker() -> None:
        for n in queue:
            await job(n)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))


async def create_many(
    target: Target,
    session: aiohttp.ClientSession,
    machine: str,
    names: Sequence[str],
    concurrency: int,
    context: Callable[[int], dict[str, Any] | None] = lambda _: None,
) -> tuple[Measured, list[Any]]:
    measured, answers = Measured(), [None] * len(names)
    latencies: list[float] = []

    async def job(n: int) -> None:
        ms, answers[n] = await target.create(session, machine, names[n], context(n))
        latencies.append(ms)

    started, cpu = time.perf_counter(), time.process_time()
    await pool(len(names), concurrency, job)
    measured.add(latencies, time.perf_counter() - started, time.process_time() - cpu)
    return measured, answers


async def alternate(
    targets: Sequence[Target], rounds: int, run: Callable[[Target], Awaitable[tuple[list[float], float]]]
) -> dict[str, Measured]:
    """``rounds`` rounds, each running ``run`` on every target in turn."""
    measured = {t.name: Measured() for t in targets}
    for _ in range(rounds):
        for target in targets:
            cpu = time.process_time()
            latencies, seconds = await run(target)
            measured[target.name].add(latencies, seconds, time.process_time() - cpu)
    return measured


# -- the run -----------------------------------------------------------------------------------------


class LoadBench:
    def __init__(
        self,
        folder: Path,
        sizes: Sizes,
        profiler: Profiler,
        statehost_command: Sequence[str] = (),
        candidate_command: Sequence[str] = (),
    ) -> None:
        self.folder = folder
        self.sizes = sizes
        self.profiler = profiler
        self.statehost = StatehostServer(folder / "statehost", command=statehost_command)
        self.baseline: ServerProcess
        if candidate_command:  # A/B: a second statehost in the baseline's column
            self.baseline = StatehostServer(folder / "candidate", command=candidate_command)
            self.baseline.name = "candidate"
        else:
            self.baseline = BaselineServer(folder / "baseline")
        self.rows: list[Row] = []
        self.raw: dict[str, Any] = {}
        self.admin: dict[str, Any] = {}
        self.targets: list[Target] = []
        self.stub_url = ""
        self.stub_hits = 0

    # -- setup ------------------------------------------------------------------------------------

    async def start(self) -> None:
        for server in (self.statehost, self.baseline):
            server.data_dir.mkdir(mode=0o700)
        await self.statehost.start()
        await self.baseline.start()
        self.admin = self.statehost.credentials()
        headers = await self._deploy(self.statehost)
        if isinstance(self.baseline, StatehostServer):
            self.targets = [
                Target(self.statehost, headers, "statehost"),
                Target(self.baseline, await self._deploy(self.baseline), "baseline"),
            ]
        else:
            self.targets = [Target(self.statehost, headers, "statehost"), Target(self.baseline, headers, "baseline")]

    async def _deploy(self, server: StatehostServer) -> dict[str, str]:
        """The benchmark machines, and the headers of a key-signed end-user token."""
        admin = server.credentials()
        async with StatehostClient(server.url, admin["adminToken"], org_id=admin["orgId"]) as client:
            for name, (fixture, major) in MACHINES.items():
                await client.machines.create(name)
                source = (FIXTURES / fixture / f"v{major}" / "machine.ts").read_bytes()
                await client.versions.create(name, source, filename="machine.ts", make_current=True, xstate_major=major)
            key = await client.keys.create("bench", use="production")
        token = sign_token(key["id"], key["key"], {"sub": "bench"})
        return {"authorization": f"Bearer {token}", "content-type": "application/json"}

    def admin_client(self) -> StatehostClient:
        return StatehostClient(self.statehost.url, self.admin["adminToken"], org_id=self.admin["orgId"])

    async def stop(self) -> None:
        for server in (self.statehost, self.baseline):
            await server.stop()

    @contextlib.asynccontextmanager
    async def stub(self) -> AsyncIterator[None]:
        """The HTTP service W4's machine fetches: GET /items/{id} -> {"id", "name"}."""

        async def item(request: web.Request) -> web.Response:
            self.stub_hits += 1
            n = int(request.match_info["id"])
            return web.json_response({"id": n, "name": f"item-{n}"})

        app = web.Application()
        app.router.add_get("/items/{id}", item)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.stub_url = f"http://127.0.0.1:{port}"
        try:
            yield
        finally:
            await runner.cleanup()

    def add(self, workload: str, metric: str, unit: str, figures: dict[str, Figure]) -> None:
        row = Row(workload, metric, unit, figures["statehost"], figures.get("baseline"))
        self.rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)

    def add_measured(self, workload: str, measured: dict[str, Measured], *, rate: str | None = "events/s") -> None:
        self.add(workload, "latency", "ms", {name: Figure.of(m.latencies) for name, m in measured.items()})
        if rate is not None:
            self.add(workload, rate, "/s", {name: Figure(m.rate) for name, m in measured.items()})
        self.raw[workload] = {
            name: {
                "requests": len(m.latencies),
                "seconds": m.seconds,
                "per_s": m.rate,
                "median_ms": statistics.median(m.latencies),
                "p90_ms": percentile(m.latencies, 0.9),
                "p99_ms": percentile(m.latencies, 0.99),
                "max_ms": max(m.latencies),
                "client_cpu_cores": m.client_cpu_s / m.seconds if m.seconds else None,
            }
            for name, m in measured.items()
        }

    # -- raw SQLite ----------------------------------------------------------------------------------

    async def raw_reference(self) -> None:
        rate = raw_sqlite(self.folder, self.sizes.raw_seconds, "FULL")
        self.raw["raw_sqlite_commits_per_s"] = rate
        self.add("reference", "raw SQLite 1-row commits, WAL, synchronous=FULL", "/s", {"statehost": Figure(rate)})

    # -- W1 -------------------------------------------------------------------------------------------

    async def w1(self) -> None:
        s = self.sizes
        async with sessions(self.targets) as session:
            for machine, label in (("toggle", "XState 5"), ("toggle-v4", "XState 4")):
                for target in self.targets:
                    await target.create(session[target.name], machine, "w1-hot")
                    for _ in range(20):  # warm-up: connection, JIT, parked sandbox
                        await target.send(session[target.name], machine, "w1-hot", "toggle")

                async def run(target: Target, machine: str = machine) -> tuple[list[float], float]:
                    latencies: list[float] = []
                    started = time.perf_counter()
                    deadline = started + s.w1_seconds
                    while time.perf_counter() < deadline:
                        ms, _ = await target.send(session[target.name], machine, "w1-hot", "toggle")
                        latencies.append(ms)
                    return latencies, time.perf_counter() - started

                async with self.profiler.record(f"w1-{machine}", self.statehost.pid):
                    measured = await alternate(self.targets, s.w1_rounds, run)
                self.add_measured(f"W1 one hot instance, {label}", measured)

    # -- W4 -------------------------------------------------------------------------------------------

    async def w4(self) -> None:
        s = self.sizes
        async with self.stub(), sessions(self.targets) as session:
            ids = iter(range(1, 10**9))
            # Each instance gets at most EVENTS_PER_FETCHER events: statehost counts max_fetches (50
            # "per event") over the whole life of a parked sandbox, so the 51st fetch of a hot
            # instance is refused. A fresh instance (created off the clock) sidesteps that.
            current = {t.name: [0, 0] for t in self.targets}  # instance number, events sent to it

            async def fresh(target: Target) -> None:
                current[target.name] = [current[target.name][0] + 1, 0]
                slug = f"w4-{current[target.name][0]}"
                await target.create(session[target.name], "fetcher", slug, {"baseUrl": self.stub_url})

            async def load(target: Target) -> float:
                n = next(ids)
                number, sent = current[target.name]
                current[target.name][1] = sent + 1
                before = self.stub_hits
                ms, state = await target.send(
                    session[target.name], "fetcher", f"w4-{number}", {"type": "load", "id": n}
                )
                item = state["publicContext"].get("item") or {}
                if state["state"] != "loaded" or item.get("id") != n or self.stub_hits != before + 1:
                    raise RuntimeError(f"{target.name}: the answer is not the state after the fetch: {state}")
                return ms

            for target in self.targets:
                await fresh(target)
                for _ in range(5):
                    await load(target)

            async def run(target: Target) -> tuple[list[float], float]:
                latencies: list[float] = []
                off_clock = 0.0
                started = time.perf_counter()
                deadline = started + s.w4_seconds
                while time.perf_counter() < deadline:
                    if current[target.name][1] >= EVENTS_PER_FETCHER:
                        t = time.perf_counter()
                        await fresh(target)
                        off_clock += time.perf_counter() - t
                    latencies.append(await load(target))
                return latencies, time.perf_counter() - started - off_clock

            measured = await alternate(self.targets, s.w4_rounds, run)
        self.add_measured("W4 invoked fetch of a local stub", measured)

    # -- W3 -------------------------------------------------------------------------------------------

    async def w3(self) -> None:
        s = self.sizes
        source = (FIXTURES / "toggle" / "v5" / "machine.ts").read_text()
        samples: dict[str, dict[str, list[float]]] = {
            t.name: {"deploy": [], "create": [], "event": [], "ready": [], "restart_event": []} for t in self.targets
        }
        statehost, baseline = self.targets
        for k in range(s.w3_deploys):
            slug = f"w3-deploy-{k}"
            # statehost: a new version of the machine through the API (bundled and checked in the
            # sandbox), made current; then the first instance of it and its first event.
            async with self.admin_client() as client:
                started = time.perf_counter()
                await client.versions.create(
                    "toggle", f"{source}\n// deploy {k}\n", filename="machine.ts", make_current=True, xstate_major=5
                )
                samples["statehost"]["deploy"].append((time.perf_counter() - started) * 1000)
            # the baseline: new code means a new process (it bundles its machines at start).
            await baseline.server.stop()
            samples["baseline"]["deploy"].append(await baseline.server.start() * 1000)
            for target in (statehost, baseline):
                async with aiohttp.ClientSession() as session:
                    ms, _ = await target.create(session, "toggle", slug)
                    samples[target.name]["create"].append(ms)
                    ms, _ = await target.send(session, "toggle", slug, "toggle")
                    samples[target.name]["event"].append(ms)
        async with sessions(self.targets) as opened:
            for target in self.targets:
                await target.create(opened[target.name], "toggle", "w3-restart")
        for _ in range(s.w3_restarts):
            for target in self.targets:
                await target.server.stop()
                samples[target.name]["ready"].append(await target.server.start() * 1000)
                async with aiohttp.ClientSession() as session:
                    ms, _ = await target.send(session, "toggle", "w3-restart", "toggle")
                samples[target.name]["restart_event"].append(ms)
        self.raw["W3"] = samples

        def figures(key: str) -> dict[str, Figure]:
            return {name: Figure.of(values[key]) for name, values in samples.items()}

        self.add(
            "W3 cold: new code", "deploy (statehost: upload a version; baseline: restart)", "ms", figures("deploy")
        )
        self.add("W3 cold: new code", "first create on it", "ms", figures("create"))
        self.add("W3 cold: new code", "first event to that instance", "ms", figures("event"))
        self.add("W3 cold: restart", "process start until it accepts connections", "ms", figures("ready"))
        self.add("W3 cold: restart", "first event to an existing instance", "ms", figures("restart_event"))

    # -- W6 -------------------------------------------------------------------------------------------

    async def w6(self) -> None:
        s = self.sizes
        names = [f"w6-{n}" for n in range(s.w6_instances)]
        async with sessions(self.targets) as session:
            for target in self.targets:
                await create_many(target, session[target.name], "toggle", names, s.create_concurrency)
        small = await self._restart_and_measure_rss("w6-0")
        for target in self.targets:
            await target.server.stop()
        sizes_before = {t.name: _db_bytes(t.server) for t in self.targets}
        added = {
            "statehost": multiply_statehost(self.statehost.database, "toggle", "w6-", s.w6_copies),
            "baseline": multiply_baseline(self.baseline.database, "toggle", "w6-", s.w6_copies),
        }
        sizes_after = {t.name: _db_bytes(t.server) for t in self.targets}
        big = await self._restart_and_measure_rss(f"w6-0-c{s.w6_copies}")
        # Warm: one event to each of N more instances (statehost parks each one's sandbox).
        warm: dict[str, int] = {}
        touched = [f"w6-{n}-c1" for n in range(s.w6_warm)]
        async with sessions(self.targets) as session:
            for target in self.targets:
                for slug in touched:
                    await target.send(session[target.name], "toggle", slug, "toggle")
                warm[target.name] = target.server.rss_kib()
        self.raw["W6"] = {
            name: {
                "instances_before": small[name][1],
                "instances_after": big[name][1],
                "copied": added[name],
                "rss_kib_before": small[name][0],
                "rss_kib_after": big[name][0],
                "rss_kib_warm": warm[name],
                "warm_instances": s.w6_warm,
                "db_bytes_before": sizes_before[name],
                "db_bytes_after": sizes_after[name],
            }
            for name in warm
        }
        r = self.raw["W6"]

        def per(name: str, before: str, after: str, n: int) -> float:
            """KiB of RSS per instance between two readings."""
            return float(r[name][after] - r[name][before]) / n

        counts = {name: r[name]["instances_after"] for name in r}
        self.add(
            "W6 memory",
            f"server RSS, {counts['statehost']:,} idle instances",
            "MiB",
            {name: Figure(r[name]["rss_kib_after"] / 1024) for name in r},
        )
        self.add(
            "W6 memory",
            f"RSS per idle instance ({small['statehost'][1]:,} → {counts['statehost']:,})",
            "KiB",
            {name: Figure(per(name, "rss_kib_before", "rss_kib_after", n=added[name])) for name in r},
        )
        self.add(
            "W6 memory",
            f"RSS added per warm instance (events to {s.w6_warm} more)",
            "KiB",
            {name: Figure(per(name, "rss_kib_after", "rss_kib_warm", n=s.w6_warm)) for name in r},
        )
        self.add(
            "W6 memory",
            "database bytes per instance",
            "B",
            {name: Figure(r[name]["db_bytes_after"] / r[name]["instances_after"]) for name in r},
        )

    async def _restart_and_measure_rss(self, slug: str) -> dict[str, tuple[int, int]]:
        """Restart both servers, send one event to ``slug``: (RSS KiB, instances in the database)."""
        out = {}
        for target in self.targets:
            await target.server.stop()
            count = count_instances(target.server.database)
            await target.server.start()
            async with aiohttp.ClientSession() as session:
                await target.send(session, "toggle", slug, "toggle")
            await asyncio.sleep(0.2)
            out[target.name] = (target.server.rss_kib(), count)
        return out

    # -- W2 -------------------------------------------------------------------------------------------

    async def w2(self) -> None:
        s = self.sizes
        names = [f"w2-{n}" for n in range(s.w2_instances)]
        async with sessions(self.targets) as session:
            created = {}
            for target in self.targets:
                created[target.name], _ = await create_many(
                    target, session[target.name], "toggle", names, s.create_concurrency
                )
            self.add_measured(
                f"W2 create {len(names):,} instances, {s.create_concurrency} clients", created, rate="creates/s"
            )
            for subset, label in (
                (names, f"W2 {len(names):,} instances, {s.w2_clients} clients"),
                (
                    names[: s.w2_parked_instances],
                    f"W2 {s.w2_parked_instances} instances (all parked), {s.w2_clients} clients",
                ),
            ):

                async def run(target: Target, subset: Sequence[str] = subset) -> tuple[list[float], float]:
                    latencies: list[float] = []
                    started = time.perf_counter()
                    deadline = started + s.w2_seconds

                    async def client(seed: int) -> None:
                        rng = random.Random(seed)
                        while time.perf_counter() < deadline:
                            ms, _ = await target.send(session[target.name], "toggle", rng.choice(subset), "toggle")
                            latencies.append(ms)

                    await asyncio.gather(*(client(n) for n in range(s.w2_clients)))
                    return latencies, time.perf_counter() - started

                async with self.profiler.record(f"w2-{len(subset)}", self.statehost.pid):
                    measured = await alternate(self.targets, s.w2_rounds, run)
                self.add_measured(label, measured, rate="durable events/s")

    # -- W5 -------------------------------------------------------------------------------------------

    async def w5(self) -> None:
        s = self.sizes
        statehost = self.targets[0]
        async with self.admin_client() as client:
            await client.machines.create("timer")
            await client.versions.create("timer", TIMER_MACHINE, filename="machine.ts", make_current=True)
        names = [f"w5-{n}" for n in range(s.w5_timers)]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            # How fast this machine's instances are created here, timed on a few whose timers are an
            # hour away (they stay pending; nothing below counts them).
            pilot_names = [f"w5-pilot-{n}" for n in range(max(20, min(300, len(names) // 20)))]
            pilot, _ = await create_many(
                statehost,
                session,
                "timer",
                pilot_names,
                s.create_concurrency,
                lambda _: {"public": {"delay": 3600_000}},
            )
            # Every timer falls due in the one second after creating them all should be over (from
            # the pilot's rate, with a wide margin: the machine is shared), the n-th at first_due + n/N seconds.
            expected_s = len(names) / pilot.rate
            first_due = time.time() * 1000 + (expected_s * 2 + 5) * 1000
            sent_delays = [0] * len(names)

            def context(n: int) -> dict[str, Any]:
                # A negative delay is refused: a timer that should already be due is due at once.
                delay = max(0, round(first_due + 1000 * n / len(names) - time.time() * 1000))
                sent_delays[n] = delay
                return {"public": {"delay": delay}}

            created, answers = await create_many(statehost, session, "timer", names, s.create_concurrency, context)
            created_by = time.time() * 1000
            # The timer's due time: the create's commit instant (its ts) plus the delay.
            due = {names[n]: a["ts"] + sent_delays[n] for n, a in enumerate(answers)}
            for n, a in enumerate(answers):
                assert a["publicContext"]["delay"] == sent_delays[n], a
            overran = sum(1 for d in due.values() if d < created_by)
            cpu_before = _cpu_s(self.statehost.pid)
            async with self.profiler.record(f"w5-{len(names)}", self.statehost.pid):
                for _ in range(int(max(60.0, len(names) / 20) / 0.25)):
                    if _pending_timers(self.statehost.database, "w5-[0-9]*") == 0:
                        break
                    await asyncio.sleep(0.25)
            delivery_cpu_s = _cpu_s(self.statehost.pid) - cpu_before
            fired = _fired(self.statehost.database, "timer")
            # The same instant through the API, for a few (GET .../events: createdAt of the transition).
            async with self.admin_client() as client:
                for slug in names[:: max(1, len(names) // 5)]:
                    history = await client.instances.transitions("timer", slug)
                    at = datetime.datetime.fromisoformat(history[-1]["createdAt"].replace("Z", "+00:00"))
                    api_ms = round(at.timestamp() * 1000)
                    if slug in fired and abs(api_ms - fired[slug]) > 1:
                        raise RuntimeError(f"W5: {slug}: GET events says {api_ms}, the database {fired[slug]}")
        lags = [fired[n] - due[n] for n in names if n in fired]
        missing = len(names) - len(lags)
        if not lags:
            raise RuntimeError("W5: no timer was delivered")
        dues = sorted(due.values())
        self.raw["W5"] = {
            "timers": len(names),
            "delivered": len(lags),
            "not_delivered_in_time": missing,
            "creates_per_s": created.rate,
            "pilot_creates_per_s": pilot.rate,
            "expected_create_s": expected_s,
            "create_s": created.seconds,
            "due_span_ms": dues[-1] - dues[0],
            "due_before_creating_ended": overran,
            "lag_ms": {
                "p50": statistics.median(lags),
                "p90": percentile(lags, 0.9),
                "p99": percentile(lags, 0.99),
                "max": max(lags),
                "min": min(lags),
            },
            "delivered_per_s": len(lags) / max(0.001, (max(fired.values()) - dues[0]) / 1000),
            # The server's CPU (all threads) from the end of the creates until all were delivered:
            # less sensitive to other processes on a shared machine than the lag.
            "server_cpu_ms_per_timer": 1000 * delivery_cpu_s / len(lags),
        }
        print(f"W5: server CPU {self.raw['W5']['server_cpu_ms_per_timer']:.2f} ms per delivered timer", flush=True)
        if overran:
            print(
                f"W5: {overran} timers fell due before creating all of them ended (creates were slower than estimated)"
            )
        if missing:
            print(f"W5: {missing} timers were not delivered before the deadline")
        self.add(
            f"W5 {len(names):,} timers due within {self.raw['W5']['due_span_ms'] / 1000:.1f} s",
            "delivery lag",
            "ms",
            {"statehost": Figure.of(lags)},
        )
        await self.lone_timers()

    async def lone_timers(self) -> None:
        """A lone timer on an otherwise idle server, ``w5_lone`` times one after another: how late it
        fires (its transition's ts minus its due time, both the server's clock, in ms)."""
        s = self.sizes
        statehost = self.targets[0]
        lags: list[float] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for n in range(s.w5_lone):
                slug = f"lone-{n}"
                delay = s.w5_lone_delay_ms
                _, answer = await statehost.create(session, "timer", slug, {"public": {"delay": delay}})
                due = answer["ts"] + delay
                fired: int | None = None
                for _ in range(int((delay + 10_000) / 5)):  # bounded: 10 s past its due time
                    fired = _fired(self.statehost.database, "timer", slug).get(slug)
                    if fired is not None:
                        break
                    await asyncio.sleep(0.005)
                if fired is None:
                    raise RuntimeError(f"W5 lone timer {slug}: not delivered within 10 s of its due time")
                lags.append(fired - due)
        self.raw["W5_lone"] = {
            "timers": len(lags),
            "delay_ms": s.w5_lone_delay_ms,
            "lag_ms": {"p50": statistics.median(lags), "max": max(lags), "min": min(lags), "all": lags},
        }
        self.add("W5 a lone timer (idle server)", "delivery lag", "ms", {"statehost": Figure.of(lags)})


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _db_bytes(server: ServerProcess) -> int:
    database = server.database
    return sum(p.stat().st_size for p in database.parent.glob(database.name + "*"))


def _read_only(database: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True)


def _pending_timers(database: Path, names: str) -> int:
    """Timers not delivered yet of the instances whose names match the GLOB pattern ``names``."""
    conn = _read_only(database)
    try:
        (n,) = conn.execute(
            "SELECT COUNT(*) FROM timers t JOIN instances i ON i.id = t.instance_id WHERE i.name GLOB ?", (names,)
        ).fetchone()
        return int(n)
    finally:
        conn.close()


def _fired(database: Path, machine_slug: str, instance: str | None = None) -> dict[str, int]:
    """Instance name -> ts of its second transition (the timer's); of one instance if named."""
    conn = _read_only(database)
    try:
        rows = conn.execute(
            "SELECT i.name, t.ts FROM transitions t JOIN instances i ON i.id = t.instance_id"
            " JOIN machines m ON m.id = i.machine_id WHERE m.slug = ? AND t.seq = 2"
            + (" AND i.name = ?" if instance is not None else ""),
            (machine_slug,) if instance is None else (machine_slug, instance),
        ).fetchall()
        return {name: int(ts) for name, ts in rows}
    finally:
        conn.close()


# -- main ----------------------------------------------------------------------------------------------


async def run(
    sizes: Sizes,
    only: Sequence[str],
    profiler: Profiler,
    statehost_command: Sequence[str] = (),
    candidate_command: Sequence[str] = (),
) -> tuple[LoadBench, float]:
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="statehost-load-", dir=ROOT / "bench"))
    bench = LoadBench(folder, sizes, profiler, statehost_command, candidate_command)
    steps: dict[str, Callable[[], Awaitable[None]]] = {
        "raw": bench.raw_reference,
        "W1": bench.w1,
        "W4": bench.w4,
        "W3": bench.w3,
        "W6": bench.w6,
        "W2": bench.w2,
        "W5": bench.w5,
    }
    try:
        await bench.start()
        for name in WORKLOADS:
            if name in only:
                print(f"-- {name}", flush=True)
                await steps[name]()
    finally:
        try:
            await bench.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return bench, time.perf_counter() - started


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process and of the children it waited for (the servers, once stopped)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _source_revision() -> str:
    """The commit the servers ran from, and whether server/runtime code had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "server", "runtime", "js_shims", "bench/baseline")
    return f"{head} (with uncommitted changes)" if dirty else head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, nothing written: checks that it works")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument(
        "--profile", type=Path, help="record statehost with py-spy during W1, W2 and W5's deliveries into this folder"
    )
    parser.add_argument(
        "--profile-option",
        action="append",
        default=[],
        help="pass an option to py-spy record (repeatable), e.g. --profile-option=--gil",
    )
    parser.add_argument(
        "--statehost-command",
        default="",
        help="start statehost with this command instead of .venv/bin/statehost (A/B runs of a candidate change;"
        " 'serve --port ...' is appended); implies nothing is written",
    )
    parser.add_argument(
        "--candidate-command",
        default="",
        help="A/B: put a second statehost, started with this command, in the baseline's column"
        " (W1, W2 and W4 only; nothing is written)",
    )
    args = parser.parse_args()
    only = [w.strip() for w in args.only.split(",")] if args.only else list(WORKLOADS)
    unknown = sorted(set(only) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workload {unknown[0]!r}")
    if args.candidate_command and set(only) - {"W1", "W2", "W4"}:
        parser.error("--candidate-command needs --only with a subset of W1,W2,W4")
    sizes = QUICK if args.quick else Sizes()
    machine = {**machine_info(), "source": _source_revision()}
    print(machine_line(machine), flush=True)
    busy, own = _busy_cpu_s(), _own_cpu_s()
    profiler = Profiler(args.profile, options=tuple(args.profile_option))
    commands = shlex.split(args.statehost_command), shlex.split(args.candidate_command)
    bench, seconds = asyncio.run(run(sizes, only, profiler, *commands))
    other_cpu_s = max(0.0, (_busy_cpu_s() - busy) - (_own_cpu_s() - own))
    machine["other_processes_cpu"] = other_cpu_s / seconds
    text = table(bench.rows)
    print()
    print(text)
    print(f"\n{seconds:.0f} s; other processes kept {other_cpu_s / seconds:.2f} of the cores busy meanwhile")
    if args.quick or args.only or args.statehost_command or args.candidate_command:
        return
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS_MD.write_text(
        f"# bench.load, {when}\n\n{machine_line(machine)}; source {machine['source']}; other processes kept"
        f" {machine['other_processes_cpu']:.2f} cores busy meanwhile\n\n{text}\n\n"
        "Medians and p99 of client-side latency; rates are requests over wall time, all rounds together.\n"
        "Ratio = statehost / baseline: above 1 is slower for a latency, faster for a rate.\n"
    )
    RESULTS_JSON.write_text(
        json.dumps(
            {
                "when": when,
                "machine": machine,
                "seconds": seconds,
                "sizes": asdict(sizes),
                "rows": [{**asdict(r), "ratio": r.ratio} for r in bench.rows],
                "raw": bench.raw,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {RESULTS_MD.relative_to(ROOT)} and {RESULTS_JSON.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
