"""Crash consistency: a node subprocess under load is killed with SIGKILL at random moments and
restarted; every acknowledged event must be in its instance's history exactly once, no instance may
be corrupt, and every timer that came due must fire. Then the same under SIGTERM (graceful)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tests.support import eventually

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20
INSTANCES = 8


class Node:
    def __init__(self, db: Path, org: str) -> None:
        self.db, self.org = db, org
        self.process: asyncio.subprocess.Process | None = None
        self.acked: set[int] = set()

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.server.crash_node",
            "--db",
            str(self.db),
            "--org",
            self.org,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        assert json.loads(line) == {"ready": True}, line

    async def read_acks(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            if "ack" in message:
                self.acked.add(message["ack"])

    def send(self, command: dict) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())


async def _setup(db: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.server.crash_node",
        "--db",
        str(db),
        "--setup",
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0
    return json.loads(out.splitlines()[-1])["org"]


async def _drive(node: Node, commands: list[dict], n: int, seconds: float, rng: random.Random) -> int:
    """Send commands for ``seconds``, in bursts, while acks are read."""
    reader = asyncio.ensure_future(node.read_acks())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(rng.randint(1, 12)):
            n += 1
            kind = "arm" if rng.random() < 0.15 else "inc"
            command = {"n": n, "instance": f"i{rng.randrange(INSTANCES)}", "type": kind}
            commands.append(command)
            node.send(command)
        await asyncio.sleep(rng.uniform(0.0, 0.03))
    return n, reader  # type: ignore[return-value]


def _check_database(db: Path, commands: list[dict], acked: set[int]) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        by_n = {c["n"]: c for c in commands}
        seen: dict[int, int] = {}
        rows = conn.execute(
            "SELECT i.name, i.seq, i.public_json, t.seq, t.event_json FROM instances i"
            " JOIN transitions t ON t.instance_id = i.id ORDER BY i.id, t.seq"
        ).fetchall()
        per_instance: dict[str, list[int]] = {}
        incs: dict[str, int] = {}
        last_seq: dict[str, int] = {}
        for name, seq, public_json, t_seq, event_json in rows:
            per_instance.setdefault(name, []).append(t_seq)
            last_seq[name] = seq
            event = json.loads(event_json)
            if "n" in event:
                seen[event["n"]] = seen.get(event["n"], 0) + 1
                assert by_n[event["n"]]["instance"] == name
                if event["type"] == "inc":
                    incs[name] = incs.get(name, 0) + 1
            assert json.loads(public_json)["count"] >= 0
        for name, seqs in per_instance.items():
            assert seqs == list(range(1, len(seqs) + 1)), f"{name}: history has gaps"
            assert last_seq[name] == seqs[-1], f"{name}: instance row and history disagree"
        counts = dict(conn.execute("SELECT name, json_extract(public_json, '$.count') FROM instances").fetchall())
        for name, count in counts.items():
            assert count == incs.get(name, 0), f"{name}: count {count} != {incs.get(name, 0)} inc transitions"
        assert all(times == 1 for times in seen.values()), "an event was applied twice"
        lost = sorted(n for n in acked if n not in seen)
        assert lost == [], f"acknowledged events missing from history: {[by_n[x] for x in lost[:10]]}"
        now_ms = time.time() * 1000
        overdue = conn.execute("SELECT COUNT(*) FROM timers WHERE due_ms < ?", (now_ms - 2_000,)).fetchone()[0]
        assert overdue == 0, "timers that came due were not delivered"
        armed = conn.execute("SELECT COUNT(*) FROM instances WHERE state_json = '\"armed\"'").fetchone()[0]
        assert armed == 0, "an armed instance never fired"
    finally:
        conn.close()


async def _timers_fired(db: Path) -> None:
    """Wait until every armed instance's timer has fired (the node delivers them; 300 ms after each
    arm, overdue ones at start)."""

    def fired() -> bool:
        conn = sqlite3.connect(db, timeout=30)
        try:
            armed = conn.execute("SELECT COUNT(*) FROM instances WHERE state_json = '\"armed\"'").fetchone()[0]
            return armed == 0 and conn.execute("SELECT COUNT(*) FROM timers").fetchone()[0] == 0
        finally:
            conn.close()

    await eventually(lambda: asyncio.to_thread(fired), within_s=120, what="every armed timer fired", every_s=0.1)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path):
    db = tmp_path / "crash.db"
    org = await _setup(db)
    rng = random.Random(os.environ.get("STATEHOST_CRASH_SEED", "statehost"))
    commands: list[dict] = []
    acked: set[int] = set()
    n = 0
    for _ in range(KILLS):
        node = Node(db, org)
        await node.start()
        n, reader = await _drive(node, commands, n, rng.uniform(0.1, 0.6), rng)
        assert node.process is not None
        node.process.kill()  # SIGKILL, mid-load
        await node.process.wait()
        await reader
        acked |= node.acked
    # Restart once more, let overdue timers fire, stop gracefully.
    node = Node(db, org)
    await node.start()
    reader = asyncio.ensure_future(node.read_acks())
    await _timers_fired(db)
    assert node.process is not None
    node.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(node.process.wait(), 30) == 0
    await reader
    assert len(acked) > 100, "the load was too light to mean anything"
    _check_database(db, commands, acked)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigterm_finishes_open_work_and_loses_nothing(tmp_path: Path):
    db = tmp_path / "term.db"
    org = await _setup(db)
    rng = random.Random("sigterm")
    commands: list[dict] = []
    node = Node(db, org)
    await node.start()
    _, reader = await _drive(node, commands, 0, 1.0, rng)
    assert node.process is not None
    node.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(node.process.wait(), 30) == 0
    await reader
    # Graceful: everything that reached the node before SIGTERM was processed and acknowledged.
    assert len(node.acked) > 0
    node2 = Node(db, org)
    await node2.start()
    reader2 = asyncio.ensure_future(node2.read_acks())
    await _timers_fired(db)
    assert node2.process is not None
    node2.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(node2.process.wait(), 30) == 0
    await reader2
    _check_database(db, commands, node.acked)
