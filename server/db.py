"""The two databases statehost runs on, behind one small interface: SQLite (the embedded default,
one file) and PostgreSQL (several nodes sharing one database: docs/deployment.md).

``server/store.py`` writes its SQL once, in the dialect both accept (``?`` placeholders,
``RETURNING``, ``ON CONFLICT``, row-value comparisons), and runs it through a :class:`Tx` inside
``Database.write`` or through ``Database.read``. Only what truly differs lives here: connections,
transactions, placeholders, schema files and error types.

Decision log:

- **SQLite: one writer connection fed by a queue** (datasette's single write thread). The writer
  takes every operation that is waiting, runs them in one transaction with a SAVEPOINT each, and
  commits once: one fsync for the whole batch (group commit). An operation that fails (a lost
  optimistic lock, a unique violation) is rolled back to its savepoint alone; the others commit.
  Each caller is released only after the commit that contains its operation. With
  ``group_commit=False`` every operation gets its own transaction (for comparison in bench/).
  Reads use a second connection: in WAL mode readers see the last commit and never block the writer.
- **PostgreSQL: a transaction per operation on a pooled connection.** Batching several callers'
  operations into one transaction would make them share fate with other nodes' row locks (one
  deadlock victim would fail the whole batch); PostgreSQL already groups concurrent commits' WAL
  flushes. Transactions run at READ COMMITTED: every write that matters is conditional (the
  instance's ``seq``, the lease's epoch, a timer row still being there) and checks its row count.
- **Schema versions**: numbered files, applied in order. SQLite keeps the number in ``PRAGMA
  user_version`` (``server/migrations/NNNN_*.sql``); PostgreSQL in the ``statehost_schema`` table
  (``server/migrations/postgres/NNNN_*.sql``), under an advisory lock so that nodes starting together
  migrate once. PostgreSQL's first file creates the schema as of SQLite's version 6; both
  directories always end at the same number (tests/server/test_store.py checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import aiosqlite
import asyncpg

__all__ = [
    "Database",
    "IntegrityError",
    "PostgresDatabase",
    "Row",
    "SqliteDatabase",
    "Tx",
    "is_database_url",
    "open_database",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
PG_MIGRATIONS_DIR = MIGRATIONS_DIR / "postgres"
T = TypeVar("T")
Synchronous = Literal["FULL", "NORMAL"]
MIGRATION_LOCK = 0x5747_4548  # pg_advisory_xact_lock key: one node migrates at a time


class Row(Protocol):
    """A result row of either backend (sqlite3.Row, asyncpg.Record): by column name or position."""

    def __getitem__(self, key: Any, /) -> Any: ...

    def keys(self) -> Any: ...


class IntegrityError(Exception):
    """A unique or foreign-key constraint refused a write (whichever backend)."""


class Tx(Protocol):
    """One transaction's statements (``?`` placeholders on both backends)."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...


class Database(Protocol):
    kind: Literal["sqlite", "postgres"]
    batches: int
    """Transactions committed (bench/ reads it to show batching)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``fn`` inside a write transaction; return once it is durably committed."""
        ...

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """One query on a committed state."""
        ...


def _schema_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def latest_schema_version(folder: Path = MIGRATIONS_DIR) -> int:
    files = _schema_files(folder)
    return int(files[-1].name[:4]) if files else 0


def is_database_url(value: str | os.PathLike[str]) -> bool:
    return isinstance(value, str) and value.startswith(("postgres://", "postgresql://"))


def open_database(
    target: Path | str,
    *,
    synchronous: Synchronous = "FULL",
    group_commit: bool = True,
    max_batch: int = 512,
    pool_size: int = 10,
) -> Database:
    """A PostgreSQL database for a ``postgresql://`` URL, else the SQLite file at that path."""
    if is_database_url(target):
        return PostgresDatabase(str(target), pool_size=pool_size)
    return SqliteDatabase(Path(target), synchronous=synchronous, group_commit=group_commit, max_batch=max_batch)


# -- SQLite ------------------------------------------------------------------------------------------


class _SqliteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            cursor = await self.conn.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            await self.conn.executemany(sql, rows)
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            return list(await self.conn.execute_fetchall(sql, params))
        except sqlite3.IntegrityError as exc:  # INSERT ... RETURNING
            raise IntegrityError(str(exc)) from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


@dataclass
class _Op:
    fn: Callable[[Tx], Awaitable[Any]]
    future: asyncio.Future[Any]


class SqliteDatabase:
    kind: Literal["sqlite", "postgres"] = "sqlite"

    def __init__(
        self, path: Path, *, synchronous: Synchronous = "FULL", group_commit: bool = True, max_batch: int = 512
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.group_commit = group_commit
        self.max_batch = max_batch
        self.batches = 0
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Op] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None

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
        self._writer_task = asyncio.create_task(self._write_loop(), name="statehost-store-writer")

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA busy_timeout = 5000")
        return conn

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        async with conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        latest = latest_schema_version()
        if current > latest:
            raise RuntimeError(
                f"{self.path} has schema version {current}, newer than this statehost ({latest}); upgrade statehost"
            )
        for path in _schema_files(MIGRATIONS_DIR):
            version = int(path.name[:4])
            if version > current:
                script = f"BEGIN IMMEDIATE;\n{path.read_text()}\nPRAGMA user_version = {version};\nCOMMIT;"
                await conn.executescript(script)

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

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        if self._writer_task is None:
            raise RuntimeError("the store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Op(fn, future))
        return await future

    async def _write_loop(self) -> None:
        conn = self._writer
        assert conn is not None
        tx = _SqliteTx(conn)
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
                        result = await op.fn(tx)
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

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        # One job on the connection's thread: execute and fetch everything at once. With separate
        # execute and fetch jobs, a concurrent query's open statement keeps the connection's WAL read
        # transaction alive, and reads keep seeing an old snapshot (stale instance seq numbers).
        assert self._reader is not None, "the store is not open"
        return list(await self._reader.execute_fetchall(sql, params))


# -- PostgreSQL --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def to_numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (statehost's SQL has no ``?`` in literals)."""
    count = 0

    def number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return re.sub(r"\?", number, sql)


def _rowcount(status: str) -> int:
    """The row count at the end of a command tag ("UPDATE 3", "INSERT 0 1", "DELETE 0")."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            status = await self.conn.execute(to_numbered(sql), *params)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc
        return _rowcount(status)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        try:
            await self.conn.executemany(to_numbered(sql), rows)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            return list(await self.conn.fetch(to_numbered(sql), *params))
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class PostgresDatabase:
    kind: Literal["sqlite", "postgres"] = "postgres"

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        self.batches = 0
        self.pool: Any = None

    async def open(self) -> None:
        self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size)
        async with self.pool.acquire() as conn:
            await self._migrate(conn)

    async def _migrate(self, conn: Any) -> None:
        latest = latest_schema_version(PG_MIGRATIONS_DIR)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS statehost_schema (version INTEGER NOT NULL)")
            current = await conn.fetchval("SELECT MAX(version) FROM statehost_schema") or 0
            if current > latest:
                raise RuntimeError(
                    f"the database has schema version {current}, newer than this statehost ({latest}); "
                    "upgrade statehost"
                )
            for path in _schema_files(PG_MIGRATIONS_DIR):
                version = int(path.name[:4])
                if version > current:
                    await conn.execute(path.read_text())
                    await conn.execute("DELETE FROM statehost_schema")
                    await conn.execute("INSERT INTO statehost_schema (version) VALUES ($1)", version)
                    current = version

    async def close(self) -> None:
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 10)
            self.pool = None

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        if self.pool is None:
            raise RuntimeError("the store is not open")
        async with self.pool.acquire() as conn, conn.transaction():
            result = await fn(_PgTx(conn))
        self.batches += 1
        return result

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        assert self.pool is not None, "the store is not open"
        return list(await self.pool.fetch(to_numbered(sql), *params))

    async def notify(self, channel: str, payload: str) -> None:
        """A NOTIFY outside any data transaction (it takes PostgreSQL's notify lock only briefly)."""
        assert self.pool is not None, "the store is not open"
        await self.pool.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def listen(self, channel: str, callback: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        """Call ``callback(payload)`` for each notification on ``channel`` (a connection of its own,
        outside the pool); returns the function that stops listening."""
        conn = await asyncpg.connect(self.url)
        await conn.add_listener(channel, lambda _conn, _pid, _channel, payload: callback(payload))

        async def stop() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

        return stop
