"""Storage: every SQL statement of statehost lives here (aiosqlite, one SQLite file).

Decision log:

- **One writer connection fed by a queue** (datasette's single write thread). The writer takes
  every operation that is waiting, runs them in one transaction with a SAVEPOINT each, and commits
  once: one fsync for the whole batch (group commit). An operation that fails (a lost optimistic
  lock, a unique violation) is rolled back to its savepoint alone; the others commit. Each caller
  is released only after the commit that contains its operation. With ``group_commit=False`` every
  operation gets its own transaction (for comparison in bench/).
- **Reads on a second connection.** In WAL mode readers see the last commit and never block the
  writer; reads may be slightly stale but are always a committed state.
- **Durability defaults**: ``journal_mode=WAL``, ``synchronous=FULL``: a commit that returned has
  reached the disk. ``synchronous=NORMAL`` is a documented setting that may lose the last commits
  on power loss (not on a process crash).
- **Optimistic concurrency**: a round commits only if the instance's ``seq`` is still the one the
  window started from, so two writers (two processes on one file) can never both win.
- **Schema versions**: numbered files in ``server/migrations``, applied in order, recorded in
  ``PRAGMA user_version``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite

from .errors import Conflict, NotFound
from .ids import new_id
from .store_directory import DirectoryMixin

__all__ = [
    "InstanceRow",
    "LogRecord",
    "RoundCommit",
    "Store",
    "TimerRow",
    "TimerSet",
    "TransitionRecord",
    "VersionRow",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
T = TypeVar("T")
Synchronous = Literal["FULL", "NORMAL"]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class VersionRow:
    id: str
    machine_id: int
    xstate_major: int | None
    bundle: str | None
    bundle_hash: str | None
    self_contained: bool
    client_info: str
    created_ms: int


@dataclass(frozen=True)
class InstanceRow:
    id: int
    machine_id: int
    org_id: str
    machine_slug: str
    name: str
    version_id: str
    desired_version_id: str | None
    status: str
    seq: int
    ts: int
    persisted: dict[str, Any]
    state: Any
    context: Any
    public_context: dict[str, Any]
    tags: list[str]
    done: bool
    created_ms: int
    parent: dict[str, Any] | None = None
    """The instance that spawned this one ({machineName, machineInstanceName}), for sendParent."""


@dataclass(frozen=True)
class TransitionRecord:
    seq: int
    ts: int
    state: Any
    event: Any
    public_context: Any
    tags: Sequence[str]
    done: bool


@dataclass(frozen=True)
class LogRecord:
    ts_ms: int
    stream: str
    level: str
    text: str


@dataclass(frozen=True)
class TimerSet:
    key: str | None
    event: Mapping[str, Any]
    due_ms: int
    target: Mapping[str, Any] | None = None
    """For a message to another instance (or a spawn): where it goes (migration 0006)."""


@dataclass
class RoundCommit:
    """Everything one round writes, in one transaction."""

    instance_id: int
    expected_seq: int
    persisted: Mapping[str, Any]
    version_id: str
    transitions: Sequence[TransitionRecord]
    context: Any
    """The full context after the last transition (the admin view)."""
    timer_ops: Sequence[tuple[Literal["set", "cancel", "cancel_all"], Any]] = ()
    """In the order they happened: ("set", TimerSet) | ("cancel", key) | ("cancel_all", None)."""
    index_values: Mapping[str, Sequence[str]] | None = None
    """The instance's index entries after this round (name -> values); None leaves them as they are."""
    delete_timer_id: int | None = None
    """The timer whose delivery produced this round: removed with its transition."""
    logs: Sequence[LogRecord] = ()
    org_id: str = ""
    machine_slug: str = ""
    instance_name: str = ""

    @property
    def new_seq(self) -> int:
        return self.transitions[-1].seq if self.transitions else self.expected_seq


def _state_columns(commit: RoundCommit) -> tuple[Any, ...]:
    """The instance row's state after a round with transitions, in the column order of
    ``seq, ts, persisted_json, inflight_json, state_json, context_json, public_json, tags_json, done``."""
    last = commit.transitions[-1]
    return (
        last.seq,
        last.ts,
        _dumps(commit.persisted),
        _dumps(commit.persisted.get("inflight", [])),
        _dumps(last.state),
        _dumps(commit.context),
        _dumps(last.public_context),
        _dumps(list(last.tags)),
        int(last.done),
    )


@dataclass(frozen=True)
class TimerRow:
    id: int
    instance_id: int
    key: str
    event: dict[str, Any]
    due_ms: int
    attempts: int
    target: dict[str, Any] | None = None
    """None: an event of the instance to itself; else a message to another instance, or a spawn."""


_TIMER_COLUMNS = "id, instance_id, timer_key, event_json, due_ms, attempts, target_json"


def _timer_row(r: sqlite3.Row) -> TimerRow:
    target = r["target_json"]
    return TimerRow(
        r["id"],
        r["instance_id"],
        r["timer_key"],
        json.loads(r["event_json"]),
        r["due_ms"],
        r["attempts"],
        None if target is None else json.loads(target),
    )


@dataclass
class _Op:
    fn: Callable[[aiosqlite.Connection], Awaitable[Any]]
    future: asyncio.Future[Any]


class Store(DirectoryMixin):
    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: Synchronous = "FULL",
        group_commit: bool = True,
        max_batch: int = 512,
    ) -> None:
        self.verified_key_tokens = collections.OrderedDict()
        self.path = Path(path)
        self.synchronous = synchronous
        self.group_commit = group_commit
        self.max_batch = max_batch
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Op] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self.batches = 0
        """Transactions committed by the writer (bench/ reads it to show batching)."""
        self._last_log_ms = 0

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> None:
        # The database holds key secrets and the server's signing keys: owner-only, like the folder.
        # (SQLite gives its -wal and -shm files the database file's permissions.)
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, mode=0o700)
        self.path.touch(mode=0o600, exist_ok=True)
        os.chmod(self.path, 0o600)
        self._writer = await self._connect()
        await self._migrate(self._writer)
        self._reader = await self._connect()
        await self._reader.execute("PRAGMA query_only = ON")
        newest = await self._read_one("SELECT MAX(ts_ms) AS ts FROM logs")
        self._last_log_ms = int(newest["ts"]) if newest is not None and newest["ts"] is not None else 0
        self._writer_task = asyncio.create_task(self._write_loop(), name="statehost-store-writer")

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA busy_timeout = 5000")
        return conn

    async def close(self) -> None:
        if self._writer_task is not None:
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
            self._writer_task = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        async with conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        files = sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))
        latest = int(files[-1].name[:4]) if files else 0
        if current > latest:
            raise RuntimeError(
                f"{self.path} has schema version {current}, newer than this statehost ({latest}); upgrade statehost"
            )
        for path in files:
            version = int(path.name[:4])
            if version <= current:
                continue
            await conn.executescript(f"BEGIN IMMEDIATE;\n{path.read_text()}\nPRAGMA user_version = {version};\nCOMMIT;")

    @property
    def schema_version(self) -> int:
        files = sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))
        return int(files[-1].name[:4]) if files else 0

    # -- the writer ---------------------------------------------------------------------------------

    async def write(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` inside a write transaction; return once it is durably committed."""
        if self._writer_task is None:
            raise RuntimeError("the store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Op(fn, future))
        return await future

    async def _write_loop(self) -> None:
        conn = self._writer
        assert conn is not None
        while True:
            batch = [await self._queue.get()]
            while self.group_commit and len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            outcomes: list[tuple[_Op, Any, BaseException | None]] = []
            try:
                await conn.execute("BEGIN IMMEDIATE")
                for op in batch:
                    await conn.execute("SAVEPOINT op")
                    try:
                        result = await op.fn(conn)
                    except Exception as exc:
                        await conn.execute("ROLLBACK TO op")
                        await conn.execute("RELEASE op")
                        outcomes.append((op, None, exc))
                    else:
                        await conn.execute("RELEASE op")
                        outcomes.append((op, result, None))
                await conn.execute("COMMIT")
                self.batches += 1
            except Exception as exc:  # the transaction itself failed: nothing of the batch is durable
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(exc)
                continue
            for op, result, error in outcomes:
                if op.future.done():
                    continue
                if error is not None:
                    op.future.set_exception(error)
                else:
                    op.future.set_result(result)

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        # One job on the connection's thread: execute and fetch everything at once. With separate
        # execute and fetch jobs, a concurrent query's open statement keeps the connection's WAL read
        # transaction alive, and reads keep seeing an old snapshot (stale instance seq numbers).
        assert self._reader is not None, "the store is not open"
        return list(await self._reader.execute_fetchall(sql, params))

    async def _read_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self._read(sql, params)
        return rows[0] if rows else None

    # -- orgs, machines, versions -----------------------------------------------------------------

    async def create_org(self, name: str, now_ms: int) -> str:
        org_id = new_id("org")

        async def op(conn: aiosqlite.Connection) -> str:
            await conn.execute("INSERT INTO orgs (id, name, created_ms) VALUES (?, ?, ?)", (org_id, name, now_ms))
            return org_id

        return await self.write(op)

    async def create_machine(self, org_id: str, slug: str, indexes: Sequence[str], now_ms: int) -> int:
        async def op(conn: aiosqlite.Connection) -> int:
            try:
                cursor = await conn.execute(
                    "INSERT INTO machines (org_id, slug, indexes_json, created_ms) VALUES (?, ?, ?, ?)",
                    (org_id, slug, _dumps(list(indexes)), now_ms),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"machine {slug!r} already exists") from exc
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        return await self.write(op)

    async def machine_id(self, org_id: str, slug: str) -> int:
        row = await self._read_one("SELECT id FROM machines WHERE org_id = ? AND slug = ?", (org_id, slug))
        if row is None:
            raise NotFound(f"machine {slug!r} not found")
        return int(row["id"])

    async def create_version(
        self,
        machine_id: int,
        *,
        bundle: str,
        bundle_hash: str,
        xstate_major: int,
        self_contained: bool,
        source: bytes,
        source_name: str,
        client_info: str,
        now_ms: int,
        make_current: bool,
    ) -> str:
        version_id = new_id("ver")

        async def op(conn: aiosqlite.Connection) -> str:
            await conn.execute(
                "INSERT INTO machine_versions (id, machine_id, client_info, xstate_major, bundle_hash, bundle,"
                " runtime_api, source, source_name, status, created_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'final', ?)",
                (
                    version_id,
                    machine_id,
                    client_info,
                    xstate_major,
                    bundle_hash,
                    bundle,
                    int(self_contained),
                    source,
                    source_name,
                    now_ms,
                ),
            )
            if make_current:
                await conn.execute("UPDATE machines SET current_version_id = ? WHERE id = ?", (version_id, machine_id))
            return version_id

        return await self.write(op)

    async def current_version_id(self, machine_id: int) -> str | None:
        row = await self._read_one("SELECT current_version_id FROM machines WHERE id = ?", (machine_id,))
        return None if row is None else row["current_version_id"]

    async def get_version(self, version_id: str) -> VersionRow:
        row = await self._read_one(
            "SELECT id, machine_id, xstate_major, bundle, bundle_hash, runtime_api, client_info, created_ms"
            " FROM machine_versions WHERE id = ? AND status = 'final'",
            (version_id,),
        )
        if row is None:
            raise NotFound(f"machine version {version_id!r} not found")
        return VersionRow(
            row["id"],
            row["machine_id"],
            row["xstate_major"],
            row["bundle"],
            row["bundle_hash"],
            bool(row["runtime_api"]),
            row["client_info"],
            row["created_ms"],
        )

    # -- instances ----------------------------------------------------------------------------------

    _INSTANCE_COLUMNS = (
        "i.id, i.machine_id, m.org_id, m.slug AS machine_slug, i.name, i.version_id, i.desired_version_id,"
        " i.status, i.seq, i.ts, i.persisted_json, i.state_json, i.context_json, i.public_json, i.tags_json,"
        " i.done, i.created_ms, i.parent_json"
    )

    @staticmethod
    def _instance(row: sqlite3.Row) -> InstanceRow:
        return InstanceRow(
            id=row["id"],
            machine_id=row["machine_id"],
            org_id=row["org_id"],
            machine_slug=row["machine_slug"],
            name=row["name"],
            version_id=row["version_id"],
            desired_version_id=row["desired_version_id"],
            status=row["status"],
            seq=row["seq"],
            ts=row["ts"],
            persisted=json.loads(row["persisted_json"]),
            state=json.loads(row["state_json"]),
            context=json.loads(row["context_json"]),
            public_context=json.loads(row["public_json"]),
            tags=json.loads(row["tags_json"]),
            done=bool(row["done"]),
            created_ms=row["created_ms"],
            parent=None if row["parent_json"] is None else json.loads(row["parent_json"]),
        )

    async def find_instance(self, machine_id: int, name: str) -> InstanceRow | None:
        row = await self._read_one(
            f"SELECT {self._INSTANCE_COLUMNS} FROM instances i JOIN machines m ON m.id = i.machine_id"
            " WHERE i.machine_id = ? AND i.name = ?",
            (machine_id, name),
        )
        return None if row is None else self._instance(row)

    async def instance_by_id(self, instance_id: int) -> InstanceRow | None:
        row = await self._read_one(
            f"SELECT {self._INSTANCE_COLUMNS} FROM instances i JOIN machines m ON m.id = i.machine_id WHERE i.id = ?",
            (instance_id,),
        )
        return None if row is None else self._instance(row)

    async def insert_instance(
        self, machine_id: int, name: str, commit: RoundCommit, now_ms: int, parent: Mapping[str, Any] | None = None
    ) -> int:
        """Create an instance with its first round, in one transaction. Conflict if it exists."""

        async def op(conn: aiosqlite.Connection) -> int:
            try:
                cursor = await conn.execute(
                    "INSERT INTO instances (machine_id, name, version_id, seq, ts, persisted_json, inflight_json,"
                    " state_json, context_json, public_json, tags_json, done, created_ms, parent_json)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        machine_id,
                        name,
                        commit.version_id,
                        *_state_columns(commit),
                        now_ms,
                        None if parent is None else _dumps(parent),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"instance {name!r} already exists") from exc
            assert cursor.lastrowid is not None
            commit.instance_id = cursor.lastrowid
            await self._write_round_rows(conn, commit, now_ms)
            return cursor.lastrowid

        return await self.write(op)

    async def commit_round(self, commit: RoundCommit, now_ms: int) -> None:
        """Write one round; Conflict if the instance moved on (or vanished) since ``expected_seq``."""

        async def op(conn: aiosqlite.Connection) -> None:
            if commit.transitions:
                cursor = await conn.execute(
                    "UPDATE instances SET seq = ?, ts = ?, persisted_json = ?, inflight_json = ?, state_json = ?,"
                    " context_json = ?, public_json = ?, tags_json = ?, done = ?, version_id = ?,"
                    # an upgrade that reached the desired version clears it
                    " desired_version_id = CASE WHEN desired_version_id = ? THEN NULL ELSE desired_version_id END"
                    " WHERE id = ? AND seq = ?",
                    (
                        *_state_columns(commit),
                        commit.version_id,
                        commit.version_id,
                        commit.instance_id,
                        commit.expected_seq,
                    ),
                )
            else:
                cursor = await conn.execute(
                    "UPDATE instances SET persisted_json = ?, inflight_json = ? WHERE id = ? AND seq = ?",
                    (
                        _dumps(commit.persisted),
                        _dumps(commit.persisted.get("inflight", [])),
                        commit.instance_id,
                        commit.expected_seq,
                    ),
                )
            if cursor.rowcount != 1:
                raise Conflict(f"instance {commit.instance_name!r} changed since seq {commit.expected_seq}")
            await self._write_round_rows(conn, commit, now_ms)

        await self.write(op)

    async def _write_round_rows(self, conn: aiosqlite.Connection, commit: RoundCommit, now_ms: int) -> None:
        if commit.transitions:
            await conn.executemany(
                "INSERT INTO transitions (instance_id, seq, ts, version_id, state_json, event_json, public_json,"
                " tags_json, done, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        commit.instance_id,
                        t.seq,
                        t.ts,
                        commit.version_id,
                        _dumps(t.state),
                        _dumps(t.event),
                        _dumps(t.public_context),
                        _dumps(list(t.tags)),
                        int(t.done),
                        now_ms,
                    )
                    for t in commit.transitions
                ],
            )
        for kind, value in commit.timer_ops:
            if kind == "set":
                key = value.key if value.key is not None else f"anonymous:{uuid.uuid4()}"
                await conn.execute(
                    "INSERT INTO timers (instance_id, timer_key, event_json, due_ms, created_ms, target_json)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        commit.instance_id,
                        key,
                        _dumps(value.event),
                        value.due_ms,
                        now_ms,
                        None if value.target is None else _dumps(value.target),
                    ),
                )
            elif kind == "cancel":
                # XState's cancel(id) reaches the most recent delayed event with that id only.
                await conn.execute(
                    "DELETE FROM timers WHERE id = (SELECT id FROM timers WHERE instance_id = ? AND timer_key = ?"
                    " ORDER BY id DESC LIMIT 1)",
                    (commit.instance_id, value),
                )
            else:
                # The instance stopped: its own timers and its delayed messages go; messages it already
                # sent (due now) stay sent.
                await conn.execute(
                    "DELETE FROM timers WHERE instance_id = ? AND (target_json IS NULL OR due_ms > ?)",
                    (commit.instance_id, now_ms),
                )
        if commit.delete_timer_id is not None:
            await conn.execute("DELETE FROM timers WHERE id = ?", (commit.delete_timer_id,))
        if commit.index_values is not None:
            await conn.execute("DELETE FROM index_entries WHERE instance_id = ?", (commit.instance_id,))
            await conn.executemany(
                "INSERT OR IGNORE INTO index_entries (instance_id, index_name, value) VALUES (?, ?, ?)",
                [(commit.instance_id, name, value) for name, values in commit.index_values.items() for value in values],
            )
        if commit.logs:
            await self._insert_logs(
                conn, commit.org_id, commit.machine_slug, commit.instance_name, commit.version_id, commit.logs
            )

    async def set_status(self, instance_id: int, status: Literal["running", "paused"]) -> None:
        async def op(conn: aiosqlite.Connection) -> None:
            cursor = await conn.execute("UPDATE instances SET status = ? WHERE id = ?", (status, instance_id))
            if cursor.rowcount != 1:
                raise NotFound("instance not found")

        await self.write(op)

    async def delete_instance(self, instance_id: int) -> None:
        async def op(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM instances WHERE id = ?", (instance_id,))

        await self.write(op)

    async def transitions(self, instance_id: int, after_seq: int = 0, limit: int = 100) -> list[TransitionRecord]:
        rows = await self._read(
            "SELECT seq, ts, state_json, event_json, public_json, tags_json, done FROM transitions"
            " WHERE instance_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (instance_id, after_seq, limit),
        )
        return [
            TransitionRecord(
                r["seq"],
                r["ts"],
                json.loads(r["state_json"]),
                json.loads(r["event_json"]),
                json.loads(r["public_json"]),
                json.loads(r["tags_json"]),
                bool(r["done"]),
            )
            for r in rows
        ]

    # -- timers ---------------------------------------------------------------------------------------

    async def next_timer_due(self, exclude: Iterable[int] = ()) -> int | None:
        excluded = list(exclude)
        marks = ",".join("?" * len(excluded))
        where = f"WHERE id NOT IN ({marks})" if excluded else ""
        row = await self._read_one(f"SELECT MIN(due_ms) AS due FROM timers {where}", excluded)
        return None if row is None or row["due"] is None else int(row["due"])

    async def due_timers(self, now_ms: int, limit: int, exclude: Iterable[int] = ()) -> list[TimerRow]:
        excluded = list(exclude)
        marks = ",".join("?" * len(excluded))
        extra = f"AND id NOT IN ({marks})" if excluded else ""
        rows = await self._read(
            f"SELECT {_TIMER_COLUMNS} FROM timers WHERE due_ms <= ? {extra} ORDER BY due_ms, id LIMIT ?",
            (now_ms, *excluded, limit),
        )
        return [_timer_row(r) for r in rows]

    async def timer_exists(self, timer_id: int) -> bool:
        return await self._read_one("SELECT 1 FROM timers WHERE id = ?", (timer_id,)) is not None

    async def timers_of(self, instance_id: int) -> list[TimerRow]:
        rows = await self._read(
            f"SELECT {_TIMER_COLUMNS} FROM timers WHERE instance_id = ? ORDER BY due_ms, id", (instance_id,)
        )
        return [_timer_row(r) for r in rows]

    async def retry_timer(self, timer_id: int, due_ms: int, attempts: int) -> None:
        async def op(conn: aiosqlite.Connection) -> None:
            await conn.execute("UPDATE timers SET due_ms = ?, attempts = ? WHERE id = ?", (due_ms, attempts, timer_id))

        await self.write(op)

    async def drop_timer(self, timer_id: int, log: tuple[str, str, str | None, str | None, LogRecord] | None) -> None:
        """Delete a timer that will not be delivered, with the log line that says why."""

        async def op(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM timers WHERE id = ?", (timer_id,))
            if log is not None:
                org_id, machine_slug, instance_name, version_id, line = log
                await self._insert_logs(conn, org_id, machine_slug, instance_name, version_id, [line])

        await self.write(op)

    # -- logs -------------------------------------------------------------------------------------------

    async def _insert_logs(
        self,
        conn: aiosqlite.Connection,
        org_id: str,
        machine_slug: str,
        instance_name: str | None,
        version_id: str | None,
        lines: Sequence[LogRecord],
    ) -> None:
        # Log timestamps never go backwards in insertion (= commit) order, so a reader that has seen
        # up to time T can never later find a committed line before T (GET /logs, wire-api 5).
        rows = []
        for line in lines:
            self._last_log_ms = max(self._last_log_ms, line.ts_ms)
            rows.append(
                (org_id, machine_slug, instance_name, version_id, self._last_log_ms, line.stream, line.level, line.text)
            )
        await conn.executemany(
            "INSERT INTO logs (org_id, machine_slug, instance_name, version_id, ts_ms, stream, level, text)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    async def insert_logs(
        self,
        org_id: str,
        machine_slug: str,
        instance_name: str | None,
        version_id: str | None,
        lines: Sequence[LogRecord],
    ) -> None:
        if not lines:
            return

        async def op(conn: aiosqlite.Connection) -> None:
            await self._insert_logs(conn, org_id, machine_slug, instance_name, version_id, lines)

        await self.write(op)

    async def logs_after(
        self,
        org_id: str,
        after_ms: int,
        *,
        to_ms: int | None = None,
        machine_slug: str | None = None,
        instance_name: str | None = None,
        version_id: str | None = None,
        limit: int = 100,
    ) -> list[sqlite3.Row]:
        """Log lines strictly after ``after_ms`` (at most ``limit``, never splitting a millisecond)."""
        where, params = ["org_id = ?", "ts_ms > ?"], [org_id, after_ms]
        for column, value in (
            ("machine_slug", machine_slug),
            ("instance_name", instance_name),
            ("version_id", version_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if to_ms is not None:
            where.append("ts_ms <= ?")
            params.append(to_ms)
        sql = (
            "SELECT id, org_id, machine_slug, instance_name, version_id, ts_ms, stream, text FROM logs"
            f" WHERE {' AND '.join(where)} ORDER BY ts_ms, id"
        )
        rows = await self._read(f"{sql} LIMIT ?", [*params, limit + 1])
        if len(rows) <= limit:
            return rows
        cut = rows[limit]["ts_ms"]
        kept = [r for r in rows[:limit] if r["ts_ms"] < cut]
        if kept:
            return kept
        # One millisecond holds more than a page: return that whole millisecond.
        return await self._read(f"SELECT * FROM ({sql}) WHERE ts_ms = ?", [*params, cut])

    async def logs(self, org_id: str, *, instance_name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        extra, params = "", [org_id]
        if instance_name is not None:
            extra, params = " AND instance_name = ?", [org_id, instance_name]
        rows = await self._read(
            f"SELECT machine_slug, instance_name, version_id, ts_ms, stream, level, text FROM logs"
            f" WHERE org_id = ?{extra} ORDER BY ts_ms, id LIMIT ?",
            (*params, limit),
        )
        return [dict(r) for r in rows]
