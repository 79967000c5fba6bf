"""Durable events per second through the engine (no HTTP), with group commit on and off, next to
the physical reference: raw SQLite single-row commits per second on the same disk.

    python -m bench.engine_throughput [--quick] [--seconds S] [--instances N] [--clients C]

- one instance: sequential events, each awaited (the per-instance ceiling);
- many instances: N instances, C concurrent clients sending to random instances;
- raw SQLite: one-row INSERT + COMMIT in a loop, WAL, synchronous=FULL (and NORMAL), same folder.

Writes bench/results/engine_throughput.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from runtime import Bundler, Upload
from server.config import Settings
from server.engine import DurableEngine

from .common import ROOT, machine_info, machine_line, percentile

RESULTS = ROOT / "bench" / "results" / "engine_throughput.json"
MACHINE = (ROOT / "fixtures" / "machines" / "toggle" / "v4" / "machine.ts").read_bytes()


def raw_sqlite(folder: Path, seconds: float, synchronous: str) -> float:
    path = folder / f"raw-{synchronous}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    body = "x" * 1000
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (body) VALUES (?)", (body,))
        conn.execute("COMMIT")
        count += 1
    conn.close()
    return count / seconds


async def engine_run(
    folder: Path,
    group_commit: bool,
    seconds: float,
    instances: int,
    clients: int,
    bundler: Bundler,
    engine_name: Literal["quickjs-native", "quickjs-wasm"] = "quickjs-native",
) -> dict[str, Any]:
    database = folder / f"engine-{engine_name}-{group_commit}.db"
    engine = DurableEngine(Settings(database=database, group_commit=group_commit, engine=engine_name), bundler=bundler)
    await engine.start()
    try:
        org = await engine.store.create_org("bench", engine.clock.now_ms())
        await engine.store.create_machine(org, "toggle", [], engine.clock.now_ms())
        await engine.instances.create_version(org, "toggle", Upload("machine.ts", MACHINE))
        svc = engine.instances

        # One hot instance, sequential.
        await svc.create(org, "toggle", "hot")
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            await svc.send_event(org, "toggle", "hot", "toggle", {})
            latencies.append((time.perf_counter() - t) * 1000)
        one = {
            "events_per_s": len(latencies) / seconds,
            "median_ms": statistics.median(latencies),
            "p99_ms": percentile(latencies, 0.99),
        }

        # Many instances, concurrent clients.
        names = [f"i{n}" for n in range(instances)]
        sem = asyncio.Semaphore(clients)

        async def create(name: str) -> None:
            async with sem:
                await svc.create(org, "toggle", name)

        await asyncio.gather(*(create(name) for name in names))
        many_latencies: list[float] = []
        batches_before = engine.store.batches
        rng = random.Random(1)
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                await svc.send_event(org, "toggle", rng.choice(names), "toggle", {})
                many_latencies.append((time.perf_counter() - t) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        batches = engine.store.batches - batches_before
        many = {
            "events_per_s": len(many_latencies) / elapsed,
            "median_ms": statistics.median(many_latencies),
            "p99_ms": percentile(many_latencies, 0.99),
            "rounds_per_transaction": len(many_latencies) / batches if batches else None,
        }
        return {"one_instance": one, "many_instances": many}
    finally:
        await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="seconds=1, 50 instances: checks that it works")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.instances = 1.0, 50
    bundler = Bundler()
    with tempfile.TemporaryDirectory(prefix="statehost-bench-", dir=ROOT / "bench") as tmp:
        folder = Path(tmp)
        raw = {
            "FULL": raw_sqlite(folder, min(args.seconds, 3), "FULL"),
            "NORMAL": raw_sqlite(folder, min(args.seconds, 3), "NORMAL"),
        }
        runs = {}
        for group_commit in (True, False):
            runs["group_commit_on" if group_commit else "group_commit_off"] = asyncio.run(
                engine_run(folder, group_commit, args.seconds, args.instances, args.clients, bundler)
            )
    machine = machine_info()
    print(machine_line(machine))
    print(f"raw SQLite single-row commits/s on this disk: FULL {raw['FULL']:.0f}, NORMAL {raw['NORMAL']:.0f}")
    print(f"{'workload':<34}{'events/s':>10}{'median ms':>11}{'p99 ms':>9}{'rounds/txn':>12}")
    for name, run in runs.items():
        for workload in ("one_instance", "many_instances"):
            r = run[workload]
            per_txn = f"{r['rounds_per_transaction']:.1f}" if r.get("rounds_per_transaction") else "-"
            label = f"{workload} ({name})"
            print(f"{label:<34}{r['events_per_s']:>10.0f}{r['median_ms']:>11.2f}{r['p99_ms']:>9.2f}{per_txn:>12}")
    if not args.quick:
        RESULTS.write_text(
            json.dumps(
                {"machine": machine, "args": vars(args), "raw_sqlite_commits_per_s": raw, "runs": runs}, indent=2
            )
            + "\n"
        )
        print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
