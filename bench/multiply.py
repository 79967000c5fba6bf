"""Many idle instances without creating each through the API: copy rows in a stopped server's SQLite.

Creating 100,000 instances through statehost's API takes longer than the whole benchmark budget, so
W6 creates a set through the API and copies those rows under new names, directly in the database
file of the stopped server. The copies are consistent with everything that references instances:

- statehost (server/migrations): ``instances`` (new ``id``, name ``<name>-c<k>``, every other
  column as it is), and the rows keyed by ``instance_id``: ``transitions`` (history),
  ``timers`` and ``index_entries``. ``logs`` name instances by text and are not copied (a log is
  not part of an instance). The persisted snapshot does not hold the instance's name or id.
- the baseline: ``instances`` (primary key ``machine, name``) and ``transitions``.

Each copy runs in one transaction; the server is started again afterwards and reads the file as
if it had created those instances itself.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["count_instances", "multiply_baseline", "multiply_statehost"]

_STATEHOST_INSTANCE_COLUMNS = (
    "machine_id",
    "version_id",
    "desired_version_id",
    "status",
    "seq",
    "ts",
    "persisted_json",
    "inflight_json",
    "state_json",
    "context_json",
    "public_json",
    "tags_json",
    "done",
    "created_ms",
)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def multiply_statehost(database: Path, machine_slug: str, prefix: str, copies: int) -> int:
    """Copy every instance of ``machine_slug`` whose name starts with ``prefix`` ``copies`` times
    (names ``<name>-c1`` ... ``<name>-c<copies>``); return how many instances were added."""
    conn = _connect(database)
    try:
        conn.execute("BEGIN IMMEDIATE")
        (machine_id,) = conn.execute("SELECT id FROM machines WHERE slug = ?", (machine_slug,)).fetchone()
        conn.execute(
            "CREATE TEMP TABLE originals AS SELECT id, name FROM instances WHERE machine_id = ? AND name GLOB ?",
            (machine_id, f"{prefix}*"),
        )
        conn.execute("CREATE TEMP TABLE copied (old_id INTEGER, new_id INTEGER)")
        added = 0
        for k in range(1, copies + 1):
            suffix = f"-c{k}"
            cursor = conn.execute(
                f"INSERT INTO instances (name, {', '.join(_STATEHOST_INSTANCE_COLUMNS)})"
                f" SELECT i.name || ?, {', '.join('i.' + c for c in _STATEHOST_INSTANCE_COLUMNS)}"
                " FROM instances i JOIN originals o ON o.id = i.id",
                (suffix,),
            )
            added += cursor.rowcount
            conn.execute("DELETE FROM copied")
            conn.execute(
                "INSERT INTO copied (old_id, new_id) SELECT o.id, n.id FROM originals o"
                " JOIN instances n ON n.machine_id = ? AND n.name = o.name || ?",
                (machine_id, suffix),
            )
            conn.execute(
                "INSERT INTO transitions (instance_id, seq, ts, version_id, state_json, event_json, public_json,"
                " tags_json, done, created_ms)"
                " SELECT c.new_id, t.seq, t.ts, t.version_id, t.state_json, t.event_json, t.public_json,"
                " t.tags_json, t.done, t.created_ms FROM transitions t JOIN copied c ON c.old_id = t.instance_id"
            )
            conn.execute(
                "INSERT INTO timers (instance_id, timer_key, event_json, due_ms, attempts, created_ms)"
                " SELECT c.new_id, t.timer_key, t.event_json, t.due_ms, t.attempts, t.created_ms"
                " FROM timers t JOIN copied c ON c.old_id = t.instance_id"
            )
            conn.execute(
                "INSERT INTO index_entries (instance_id, index_name, value)"
                " SELECT c.new_id, e.index_name, e.value FROM index_entries e JOIN copied c ON c.old_id = e.instance_id"
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return added
    finally:
        conn.close()


def multiply_baseline(database: Path, machine: str, prefix: str, copies: int) -> int:
    """The same for the baseline's two tables."""
    conn = _connect(database)
    try:
        conn.execute("BEGIN IMMEDIATE")
        added = 0
        for k in range(1, copies + 1):
            suffix = f"-c{k}"
            cursor = conn.execute(
                "INSERT INTO instances (machine, name, snapshot, seq, ts, created_at)"
                " SELECT machine, name || ?, snapshot, seq, ts, created_at FROM instances"
                " WHERE machine = ? AND name GLOB ? AND name NOT GLOB '*-c[0-9]*'",
                (suffix, machine, f"{prefix}*"),
            )
            added += cursor.rowcount
            conn.execute(
                "INSERT INTO transitions (machine, name, seq, event, state, created_at)"
                " SELECT machine, name || ?, seq, event, state, created_at FROM transitions"
                " WHERE machine = ? AND name GLOB ? AND name NOT GLOB '*-c[0-9]*'",
                (suffix, machine, f"{prefix}*"),
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return added
    finally:
        conn.close()


def count_instances(database: Path) -> int:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        (n,) = conn.execute("SELECT COUNT(*) FROM instances").fetchone()
        return int(n)
    finally:
        conn.close()
