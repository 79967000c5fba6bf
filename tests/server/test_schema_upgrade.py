"""Database schema versions (server/db.py): an upgrade of a database that holds instances, timers,
history and logs keeps every row and the engine carries on with them; a database written by a
newer statehost is refused, with both versions named and a non-zero exit of ``statehost serve``.

The old-schema database is made by the old statehost itself: the tree of the commit just before
the newest schema file was added, taken from git history (``git archive``), run from a temporary
directory with this checkout's virtualenv and node_modules. So the rows are exactly what the old
code paths wrote, not what a test imagines they wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

from runtime import FakeClock
from server.db import MIGRATIONS_DIR, latest_schema_version
from server.engine import DurableEngine
from server.store import Store
from tests.server.conftest import eventually, settings_for
from tests.server.test_storage_faults import ServeProcess, check_consistent, need_root_tool

ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400_000

OLD_DRIVER = r'''
"""Run by the old statehost (its own tree first on sys.path): fill a database through its code."""
import asyncio, json, sys
from pathlib import Path
from runtime import Bundler, FakeClock, Upload
from server.config import Settings
from server.engine import DurableEngine
import server

assert Path(server.__file__).resolve().parents[1] == Path.cwd().resolve(), server.__file__
SRC = """import { createMachine, assign } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
export default createMachine({
  id: "k", predictableActionArguments: true, initial: "idle", context: { public: { n: 0 } },
  states: {
    idle: { on: {
      inc: { actions: [assign({ public: (c) => ({ n: c.public.n + 1 }) }), () => console.log("inc")] },
      tomorrow: "tomorrow", never: "never",
    } },
    tomorrow: { after: { 86400000: "fired" } },
    never: { after: { 864000000: "fired" }, on: { disarm: "idle" } },
    fired: { on: { inc: { actions: assign({ public: (c) => ({ n: c.public.n + 1 }) }) } } },
  },
});
"""

async def main(db, start_ms):
    clock = FakeClock(start_ms)
    settings = Settings(database=Path(db), engine="quickjs-native", workers=1)
    engine = DurableEngine(settings, clock=clock, bundler=Bundler())
    await engine.start()
    org = await engine.store.create_org("old", clock.now_ms())
    await engine.store.create_machine(org, "k", [], clock.now_ms())
    version = await engine.instances.create_version(org, "k", Upload("machine.ts", SRC.encode(), xstate_major=4))
    for name in ("counted", "timed", "withdrawn"):
        await engine.instances.create(org, "k", name)
    for _ in range(3):
        clock.advance(10)
        await engine.instances.send_event(org, "k", "counted", "inc", {})
    await engine.instances.send_event(org, "k", "timed", "tomorrow", {})
    await engine.instances.send_event(org, "k", "withdrawn", "never", {})
    await engine.instances.send_event(org, "k", "withdrawn", "disarm", {})
    await engine.stop()
    print(json.dumps({"org": org, "version": version, "now": clock.now_ms()}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
'''


def _git(*args: str) -> str:
    result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if result.returncode != 0:
        need_root_tool(
            f"the schema upgrade test needs this checkout's git history: git {' '.join(args)}: {result.stderr}"
        )
    return result.stdout.strip()


def _previous_schema_tree(dest: Path) -> tuple[str, int]:
    """The tree of the commit before the newest schema file was added, extracted into ``dest``."""
    newest = sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))[-1]
    added = _git("log", "--diff-filter=A", "--format=%H", "--", str(newest.relative_to(ROOT))).splitlines()
    if not added:
        need_root_tool(f"no commit in this checkout's history adds {newest.name} (a shallow clone?)")
    commit = _git("rev-parse", f"{added[-1]}^")
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    (dest / "node_modules").symlink_to(ROOT / "node_modules")
    old = sorted((dest / "server" / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return commit, int(old[-1].name[:4])


def _tables(db: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table (as column -> value), in a stable order."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            name: sorted((dict(row) for row in conn.execute(f'SELECT * FROM "{name}"')), key=repr) for name in names
        }
    finally:
        conn.close()


async def test_an_upgrade_keeps_instances_timers_history_and_logs_and_the_engine_carries_on(tmp_path: Path, bundler):
    commit, old_version = _previous_schema_tree(tmp_path / "old")
    latest = latest_schema_version()
    assert old_version < latest
    (tmp_path / "old" / "drive_old.py").write_text(OLD_DRIVER)
    db = tmp_path / "data" / "statehost.db"
    db.parent.mkdir()
    start_ms = 1_700_000_000_000
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "drive_old.py",
        str(db),
        str(start_ms),
        cwd=tmp_path / "old",
        env={**os.environ, "PYTHONPATH": str(tmp_path / "old")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, f"the statehost of {commit}: " + err.decode(errors="replace")[-3000:]
    made = json.loads(out.decode().splitlines()[-1])
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == old_version
    conn.close()
    before = _tables(db)
    assert len(before["transitions"]) == 9 and len(before["timers"]) == 1 and before["logs"]

    clock = FakeClock(made["now"])
    engine = DurableEngine(settings_for(tmp_path / "data"), clock=clock, bundler=bundler)
    await engine.start()
    try:
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest
        conn.close()
        after = _tables(db)
        # Every row the old statehost wrote is there, unchanged in every column it had.
        for table, rows in before.items():
            columns = set(rows[0]) if rows else set()
            kept = sorted(({c: v for c, v in row.items() if c in columns} for row in after[table]), key=repr)
            assert kept == rows, f"table {table} changed in the upgrade"
        org = made["org"]
        counted = await engine.instances.read(org, "k", "counted", None)
        assert counted.public_context == {"n": 3} and counted.state == "idle"
        # The engine carries on from the old rows: an event, then the old timer coming due.
        state = await engine.instances.send_event(org, "k", "counted", "inc", {})
        assert state.public_context == {"n": 4} and state.ts > counted.ts
        clock.advance(DAY)

        async def fired() -> bool:
            return (await engine.instances.read(org, "k", "timed", None)).state == "fired"

        await eventually(fired, within_s=30)
        withdrawn = await engine.instances.read(org, "k", "withdrawn", None)
        assert withdrawn.state == "idle"
        assert engine.timers is not None and engine.timers.delivered == 1
    finally:
        await engine.stop()
    histories = check_consistent(db)
    assert [e["type"] for e in histories["counted"]] == ["xstate.init", "inc", "inc", "inc", "inc"]
    assert [e["type"] for e in histories["timed"]] == ["xstate.init", "tomorrow", "xstate.after(86400000)#k.tomorrow"]


async def _refused(node: ServeProcess, found: int, latest: int) -> None:
    await node.start(wait=False)
    code = await node.exit_code(within_s=120)
    output = "".join(node.output)
    assert code != 0, output
    assert f"schema version {found}" in output and f"({latest})" in output, output
    assert "Traceback" not in output, output


async def test_serve_refuses_a_sqlite_database_with_a_newer_schema(tmp_path: Path):
    latest = latest_schema_version()
    data = tmp_path / "data"
    async with Store(data / "statehost.db") as store:
        await store.create_org("o", 0)
    conn = sqlite3.connect(data / "statehost.db")
    conn.execute(f"PRAGMA user_version = {latest + 1}")
    conn.commit()
    conn.close()
    await _refused(ServeProcess(data), latest + 1, latest)
    conn = sqlite3.connect(data / "statehost.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == latest + 1  # nothing was changed
    assert conn.execute("SELECT name FROM orgs").fetchall() == [("o",)]
    conn.close()


async def test_serve_refuses_a_postgres_database_with_a_newer_schema(tmp_path: Path, pg_url: str):
    latest = latest_schema_version()
    async with Store(pg_url) as store:
        await store.create_org("o", 0)
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("UPDATE statehost_schema SET version = $1", latest + 1)
        await _refused(ServeProcess(tmp_path / "data", "--database-url", pg_url), latest + 1, latest)
        assert await conn.fetchval("SELECT version FROM statehost_schema") == latest + 1
        assert await conn.fetchval("SELECT count(*) FROM orgs") == 1
    finally:
        await conn.close()


def test_the_schema_files_name_consecutive_versions():
    """Versions are applied by number: a gap would leave a database between two versions."""
    numbers = [int(p.name[:4]) for p in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))]
    assert numbers == list(range(1, len(numbers) + 1))
