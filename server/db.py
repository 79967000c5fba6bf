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
  The writer has a thread and a plain sqlite3 connection of its own, and a whole batch runs there
  in one call (operations never suspend on it): one hop from the event loop per batch instead of
  one per statement (bench A/B: +16% durable events/s with 1,000 instances).
  Reads use a second connection: in WAL mode readers see the last commit and never block the writer.
- **SQLite: no SAVEPOINT unless an operation fails.** A batch first runs its operations back to
  back; only if one fails is it rolled back and run again with a SAVEPOINT around each, so a
  round costs BEGIN, its own statements and COMMIT (docs/decisions.md, "A lean commit path").
- **PostgreSQL: group commit over ``pool_size // 2`` writers.** A write that finds a writer free
  runs its transaction at once, in its caller's task, on a pooled connection; writes that arrive
  while every writer is busy wait and share the next transaction (one WAL flush, one round trip
  each for BEGIN and COMMIT). If an operation of a batch fails (a lost optimistic lock, a constraint, a deadlock with
  another node's locks), the batch is rolled back; that operation runs again alone, for its own
  outcome, and the others again together: a failure stays with the operation that caused it. Transactions run at
  READ COMMITTED: every write that matters is conditional (the instance's ``seq``, the lease's
  epoch, a timer row still being there) and checks its row count.
- **Schema versions**: numbered files, applied in order. SQLite keeps the number in ``PRAGMA
  user_version`` (``server/migrations/NNNN_*.sql``); PostgreSQL in the ``statehost_schema`` table
  (``server/migrations/postgres/NNNN_*.sql``), under an advisory lock so that nodes starting together
  migrate once. PostgreSQL's first file creates the schema as of SQLite's version 6; both
  directories always end at the same number (tests/server/test_store.py checks).
- **Storage faults are 503s with a code, never 500s** (``storage_error``): a full disk is
  ``storage-full``, an I/O error, a read-only file or a lock held past ``busy_timeout`` is
  ``storage-unavailable``. SQLite rolls a transaction back by itself after some of these (a full
  disk or an I/O error in the middle of it); the writer then fails the whole batch, not just the
  operation that met it, since the others' work is gone too. The writer thread and its connection
  carry on: the next batch commits as soon as the disk takes writes again (docs/durability.md,
  "Storage faults").
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import os
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

import aiosqlite
import asyncpg

from runtime import resources

from .errors import ApiError, StorageFull, StorageUnavailable, Unavailable

__all__ = [
    "Database",
    "IntegrityError",
    "PostgresDatabase",
    "Row",
    "SchemaTooNew",
    "SqliteDatabase",
    "Tx",
    "is_database_url",
    "open_database",
]

MIGRATIONS_DIR = resources.migrations_dir()
PG_MIGRATIONS_DIR = MIGRATIONS_DIR / "postgres"
T = TypeVar("T")
Synchronous = Literal["FULL", "NORMAL"]
MIGRATION_LOCK = 0x5747_4548  # pg_advisory_xact_lock key: one node migrates at a time


class Row(Protocol):
    """A result row of either backend (sqlite3.Row, asyncpg.Record): by column name or position."""

    def __getitem__(self, key: Any, /) -> Any: ...

    def keys(self) -> Any: ...


class SchemaTooNew(RuntimeError):
    """The database was written by a newer statehost: this one refuses to start on it."""

    def __init__(self, where: str, found: int, known: int) -> None:
        super().__init__(
            f"{where} has schema version {found}, newer than the newest this statehost knows ({known}): "
            f"upgrade statehost to a release with schema version {found}; nothing was changed"
        )
        self.found = found
        self.known = known


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
    operations: int
    """Write operations committed (``operations / batches``: how well group commit groups)."""
    statements: int
    """Statements sent in write transactions, BEGIN and COMMIT included."""

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
        return PostgresDatabase(str(target), pool_size=pool_size, group_commit=group_commit, max_batch=max_batch)
    return SqliteDatabase(Path(target), synchronous=synchronous, group_commit=group_commit, max_batch=max_batch)


# -- SQLite ------------------------------------------------------------------------------------------

_SQLITE_FULL = 13
_SQLITE_STORAGE = {
    5: "the database is locked by another process",  # SQLITE_BUSY (after busy_timeout)
    6: "the database table is locked",  # SQLITE_LOCKED
    7: "SQLite ran out of memory",  # SQLITE_NOMEM
    8: "the database file is read-only",  # SQLITE_READONLY
    10: "the disk failed to read or write the database",  # SQLITE_IOERR
    11: "the database file is corrupt",  # SQLITE_CORRUPT
    14: "the database file cannot be opened",  # SQLITE_CANTOPEN
    26: "the database file is not a database",  # SQLITE_NOTADB
}


_SQLITE_IOERR_FSYNC = {10 | (4 << 8), 10 | (5 << 8)}  # SQLITE_IOERR_FSYNC, SQLITE_IOERR_DIR_FSYNC


def storage_error(exc: BaseException) -> ApiError | None:
    """The 503 for a SQLite error that is the storage's fault, not the request's; None for others
    (a constraint, a bug in a statement)."""
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    primary = int(code) & 0xFF
    name = getattr(exc, "sqlite_errorname", str(code))
    if primary == _SQLITE_FULL:
        return StorageFull(
            f"the database's disk is full ({name}: {exc}): nothing of this request was stored; "
            "it can be sent again once space is freed"
        )
    problem = _SQLITE_STORAGE.get(primary)
    if problem is None:
        return None
    if code in _SQLITE_IOERR_FSYNC:
        # The commit's frames were written, then the flush failed: SQLite reports the transaction
        # as failed, but a restart's WAL recovery may still find it whole. Never claim "not stored".
        return StorageUnavailable(
            f"the disk failed to flush the commit ({name}: {exc}): the request may or may not have been "
            "stored; read the instance before sending it again"
        )
    return StorageUnavailable(f"{problem} ({name}: {exc}): nothing of this request was stored; try again")


def _mapped(exc: Exception) -> Exception:
    return storage_error(exc) or exc


class _SqliteTx:
    """Statements on the writer thread's own connection. The methods are coroutines only to share
    the ``Tx`` interface: they never suspend, so a whole batch runs in one call on that thread."""

    def __init__(self, conn: sqlite3.Connection, db: SqliteDatabase) -> None:
        self.conn = conn
        self.db = db

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.db.statements += 1
        try:
            return self.conn.execute(sql, params).rowcount
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
        except sqlite3.Error as exc:
            raise _mapped(exc) from exc

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.db.statements += 1
        try:
            self.conn.executemany(sql, rows)
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
        except sqlite3.Error as exc:
            raise _mapped(exc) from exc

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.db.statements += 1
        try:
            return list(self.conn.execute(sql, params).fetchall())
        except sqlite3.IntegrityError as exc:  # INSERT ... RETURNING
            raise IntegrityError(str(exc)) from exc
        except sqlite3.Error as exc:
            raise _mapped(exc) from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


def _run_to_end(coroutine: Any) -> Any:
    """The result of a coroutine that never suspends (a store operation on ``_SqliteTx``)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise RuntimeError("a store operation awaited something other than its transaction")


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
        self.operations = 0
        """Operations committed (``operations / batches``: how well group commit groups)."""
        self.statements = 0
        """Statements sent to SQLite by the writer, BEGIN and COMMIT included (an executemany counts
        once): tests/server/test_commit_path.py pins how many a round takes."""
        self.failed_batches = 0
        """Transactions whose commit failed (a full disk, an I/O error): all their operations failed."""
        self._writer: sqlite3.Connection | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
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
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="statehost-sqlite-writer")
        await self._on_writer_thread(self._open_writer)
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        self._reader.row_factory = sqlite3.Row
        for pragma in self._pragmas():
            await self._reader.execute(pragma)
        await self._reader.execute("PRAGMA query_only = ON")
        self._writer_task = asyncio.create_task(self._write_loop(), name="statehost-store-writer")

    def _pragmas(self) -> list[str]:
        return [
            "PRAGMA journal_mode = WAL",
            f"PRAGMA synchronous = {self.synchronous}",
            "PRAGMA foreign_keys = ON",
            "PRAGMA busy_timeout = 5000",
        ]

    async def _on_writer_thread(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._thread is not None
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _open_writer(self) -> None:
        """On the writer thread: its connection, and the schema brought up to date."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        for pragma in self._pragmas():
            conn.execute(pragma)
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        latest = latest_schema_version()
        if current > latest:
            conn.close()
            raise SchemaTooNew(f"the database {self.path}", current, latest)
        for path in _schema_files(MIGRATIONS_DIR):
            version = int(path.name[:4])
            if version > current:
                conn.executescript(f"BEGIN IMMEDIATE;\n{path.read_text()}\nPRAGMA user_version = {version};\nCOMMIT;")
        self._writer = conn

    async def close(self) -> None:
        if self._writer_task is not None:
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
            self._writer_task = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._thread is not None:
            if self._writer is not None:
                await self._on_writer_thread(self._writer.close)
                self._writer = None
            self._thread.shutdown(wait=True)
            self._thread = None

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        if self._writer_task is None:
            raise RuntimeError("the store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Op(fn, future))
        return await future

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while self.group_commit and len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                # The whole batch in one hop to the writer thread: one transaction, one fsync.
                outcomes = await self._on_writer_thread(self._run_batch, [op.fn for op in batch])
            except Exception as exc:  # the transaction itself failed: nothing of the batch is durable
                self.failed_batches += 1
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(exc)
                continue
            self.batches += 1
            self.operations += len(batch)
            for op, (result, error) in zip(batch, outcomes, strict=True):
                if op.future.done():
                    continue
                if error is not None:
                    op.future.set_exception(error)
                else:
                    op.future.set_result(result)

    def _run_batch(self, fns: list[Callable[[Tx], Awaitable[Any]]]) -> list[tuple[Any, BaseException | None]]:
        """On the writer thread: the batch's operations in one transaction. An operation that fails
        is rolled back alone; the others commit. When the transaction itself fails (its COMMIT, or
        SQLite rolled it back after a full disk or an I/O error), every operation of the batch fails
        with the storage error; the connection stays usable.

        The first attempt runs the operations back to back with no SAVEPOINT: two statements fewer
        per operation, and nearly every batch succeeds whole. If one of them fails, the attempt is
        rolled back and the batch runs again with a SAVEPOINT around each operation, so that only
        the failing one is undone (store operations only run SQL, so running one twice is safe;
        the first run's effects were rolled back). A lone operation needs no SAVEPOINT at all."""
        conn = self._writer
        assert conn is not None
        tx = _SqliteTx(conn, self)
        try:
            outcomes = self._attempt(conn, tx, fns, savepoints=False)
            if outcomes is None:
                outcomes = self._attempt(conn, tx, fns, savepoints=True)
                assert outcomes is not None
        except Exception as exc:
            with contextlib.suppress(Exception):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            mapped = storage_error(exc)
            if mapped is not None:
                raise mapped from exc
            raise
        return outcomes

    def _attempt(
        self, conn: sqlite3.Connection, tx: _SqliteTx, fns: list[Callable[[Tx], Awaitable[Any]]], *, savepoints: bool
    ) -> list[tuple[Any, BaseException | None]] | None:
        """One transaction over ``fns``; None when an operation failed without SAVEPOINTs in a batch
        of several (rolled back: run it again with them)."""
        lone = len(fns) == 1
        self.statements += 2  # BEGIN, COMMIT
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[tuple[Any, BaseException | None]] = []
        for fn in fns:
            if savepoints:
                self.statements += 2  # SAVEPOINT, RELEASE
                conn.execute("SAVEPOINT op")
            try:
                result = _run_to_end(fn(tx))
            except Exception as exc:
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back: the batch's earlier operations
                    # are gone too, and the rest would run outside any transaction.
                    if isinstance(exc, ApiError):
                        raise
                    raise _mapped(exc) from exc
                if savepoints:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((None, exc))
                    continue
                self.statements += 1
                conn.execute("ROLLBACK")
                if lone:
                    return [(None, exc)]
                return None
            if savepoints:
                conn.execute("RELEASE op")
            outcomes.append((result, None))
        conn.execute("COMMIT")
        return outcomes

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        # One job on the connection's thread: execute and fetch everything at once. With separate
        # execute and fetch jobs, a concurrent query's open statement keeps the connection's WAL read
        # transaction alive, and reads keep seeing an old snapshot (stale instance seq numbers).
        assert self._reader is not None, "the store is not open"
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise _mapped(exc) from exc


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
    def __init__(self, conn: Any, db: PostgresDatabase) -> None:
        self.conn = conn
        self.db = db

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.db.statements += 1
        try:
            status = await self.conn.execute(to_numbered(sql), *params)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc
        return _rowcount(status)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        self.db.statements += 1
        try:
            await self.conn.executemany(to_numbered(sql), rows)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.db.statements += 1
        try:
            return list(await self.conn.fetch(to_numbered(sql), *params))
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


_CONNECTION_LOST = (OSError, asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError)
"""What asyncpg raises when PostgreSQL cannot be reached, or shut down or dropped the connection."""


@contextlib.asynccontextmanager
async def _reachable() -> Any:
    """A database that cannot be reached is a 503 (``Unavailable``) for whoever asked, never a 500;
    nothing was committed by the statement that met it. The pool reconnects on later use."""
    try:
        yield
    except _CONNECTION_LOST as exc:
        raise Unavailable(f"the database is unreachable ({type(exc).__name__}: {exc}); try again") from exc
    except asyncpg.DiskFullError as exc:
        raise StorageFull(
            f"the database's disk is full ({exc}): nothing of this request was stored; "
            "it can be sent again once space is freed"
        ) from exc
    except asyncpg.InsufficientResourcesError as exc:  # out of memory, too many connections
        raise StorageUnavailable(
            f"the database is out of resources ({type(exc).__name__}: {exc}): nothing of this request "
            "was stored; try again"
        ) from exc


async def _keep_session(_conn: Any) -> None:
    """A pool's ``reset``: nothing to undo (see PostgresDatabase.open)."""


class PostgresDatabase:
    kind: Literal["sqlite", "postgres"] = "postgres"

    def __init__(self, url: str, *, pool_size: int = 10, group_commit: bool = True, max_batch: int = 512) -> None:
        self.url = url
        self.pool_size = pool_size
        self.group_commit = group_commit
        self.max_batch = max_batch
        self.writers = max(1, pool_size // 2)
        """Transactions that write at once; the pool's other connections serve reads."""
        self.batches = 0
        self.operations = 0
        self.statements = 0
        """Statements sent in write transactions, BEGIN and COMMIT included."""
        self._pending: collections.deque[_Op] = collections.deque()
        self._running = 0
        self._drains: set[asyncio.Task[None]] = set()
        self.pool: Any = None
        self.relaxed_pool: Any = None
        """Connections whose commits do not wait for the WAL flush (``relaxed``)."""

    async def open(self) -> None:
        # No session state is ever left on a pooled connection (no LISTEN, no session advisory
        # locks, no SET outside a transaction), so releasing one skips asyncpg's reset query (a
        # round trip per statement otherwise: bench.nodes counted it as a transaction per read).
        self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size, reset=_keep_session)
        async with self.pool.acquire() as conn:
            await self._migrate(conn)
        self.relaxed_pool = await asyncpg.create_pool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            reset=_keep_session,
            server_settings={"synchronous_commit": "off"},
        )

    async def _migrate(self, conn: Any) -> None:
        latest = latest_schema_version(PG_MIGRATIONS_DIR)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS statehost_schema (version INTEGER NOT NULL)")
            current = await conn.fetchval("SELECT MAX(version) FROM statehost_schema") or 0
            if current > latest:
                raise SchemaTooNew("the PostgreSQL database", current, latest)
            for path in _schema_files(PG_MIGRATIONS_DIR):
                version = int(path.name[:4])
                if version > current:
                    await conn.execute(path.read_text())
                    await conn.execute("DELETE FROM statehost_schema")
                    await conn.execute("INSERT INTO statehost_schema (version) VALUES ($1)", version)
                    current = version

    async def close(self) -> None:
        for pool in (self.relaxed_pool, self.pool):
            if pool is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pool.close(), 10)
        self.pool = self.relaxed_pool = None

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        if self.pool is None:
            raise RuntimeError("the store is not open")
        if not self.group_commit:
            return cast(T, (await self._transaction([fn]))[0])
        if self._running < self.writers:
            # A writer is free: this write's transaction runs at once, in the caller's own task
            # (no hand-off: the caller resumes right after its commit, as without group commit).
            self._running += 1
            try:
                return cast(T, (await self._transaction([fn]))[0])
            finally:
                self._running -= 1
                self._start_drains()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(_Op(fn, future))
        return await future

    def _start_drains(self) -> None:
        while self._pending and self._running < self.writers:
            self._running += 1
            writer = asyncio.create_task(self._drain(), name="statehost-pg-writer")
            self._drains.add(writer)
            writer.add_done_callback(self._drains.discard)

    async def _drain(self) -> None:
        """Commits the writes that waited while every writer was busy, in batches (group commit),
        until none waits."""
        try:
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
                await self._run_batch(batch)
        finally:
            self._running -= 1

    async def _run_batch(self, batch: list[_Op]) -> None:
        outcomes: dict[int, tuple[Any, BaseException | None]] = {}
        remaining = list(range(len(batch)))
        failed: list[int] = []
        while remaining:
            try:
                results = await self._transaction([batch[i].fn for i in remaining])
            except _BatchFailed as exc:
                # One operation failed (or met a deadlock): the transaction was rolled back. The
                # others run again together; then that one alone, for its own outcome (after them,
                # as it ran after those before it and would have prevailed over none of them).
                failed.append(remaining.pop(exc.index))
                continue
            except Exception as exc:  # the connection or the commit failed: none of them is known durable
                outcomes.update((i, (None, exc)) for i in remaining)
                break
            outcomes.update((i, (result, None)) for i, result in zip(remaining, results, strict=True))
            break
        for alone in failed:
            try:
                outcomes[alone] = ((await self._transaction([batch[alone].fn]))[0], None)
            except Exception as exc:
                outcomes[alone] = (None, exc)
        for i, op in enumerate(batch):
            result, error = outcomes[i]
            if op.future.done():
                continue
            if error is not None:
                op.future.set_exception(error)
            else:
                op.future.set_result(result)

    async def _transaction(self, fns: list[Callable[[Tx], Awaitable[Any]]]) -> list[Any]:
        """``fns`` in one transaction on a pooled connection. A lone operation's own error is raised
        as it is; in a batch of several, an operation's error is _BatchFailed (the transaction was
        rolled back: nothing of it is stored)."""
        assert self.pool is not None, "the store is not open"
        async with _reachable(), self.pool.acquire() as conn:
            tx = _PgTx(conn, self)
            try:
                self.statements += 2  # BEGIN, COMMIT
                async with conn.transaction():
                    results = []
                    for index, fn in enumerate(fns):
                        try:
                            results.append(await fn(tx))
                        except _CONNECTION_LOST:
                            raise
                        except Exception as exc:
                            if len(fns) == 1:
                                raise
                            raise _BatchFailed(index) from exc
            except asyncpg.InterfaceError as exc:
                # The connection died inside the transaction (the backend was terminated, the
                # server restarted): the transaction's end then fails with an InterfaceError that
                # hides the cause. PostgreSQL rolls back whatever the dead connection had not
                # committed; the pool replaces it.
                cause = exc.__context__
                while isinstance(cause, _BatchFailed):
                    cause = cause.__cause__
                if not isinstance(cause, _CONNECTION_LOST):
                    raise
                raise Unavailable(
                    f"the database is unreachable: it closed the connection in the middle of a transaction "
                    f"({type(cause).__name__}: {cause}); try again"
                ) from exc
        self.batches += 1
        self.operations += len(fns)
        return results

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        assert self.pool is not None, "the store is not open"
        async with _reachable():
            return list(await self.pool.fetch(to_numbered(sql), *params))

    async def relaxed(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """One statement in a transaction of its own that commits without waiting for the WAL flush
        (``synchronous_commit = off``): for writes whose loss in a database crash is harmless."""
        assert self.relaxed_pool is not None, "the store is not open"
        async with _reachable():
            return list(await self.relaxed_pool.fetch(to_numbered(sql), *params))

    async def notify(self, channel: str, payload: str) -> None:
        """A NOTIFY outside any data transaction (it takes PostgreSQL's notify lock only briefly)."""
        assert self.pool is not None, "the store is not open"
        async with _reachable():
            await self.pool.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def listen(self, channel: str, callback: Callable[[str], None]) -> Listener:
        """Call ``callback(payload)`` for each notification on ``channel``, on a connection of its
        own outside the pool. The returned listener says when that connection was lost (the
        database restarted): notifications sent meanwhile are gone, and the caller listens again."""
        async with _reachable():
            conn = await asyncpg.connect(self.url)
            await conn.add_listener(channel, lambda _conn, _pid, _channel, payload: callback(payload))
        return Listener(conn)


class _BatchFailed(Exception):
    """The operation at ``index`` of a PostgreSQL batch failed: the batch was rolled back."""

    def __init__(self, index: int) -> None:
        super().__init__(f"operation {index} of the batch failed")
        self.index = index


class Listener:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @property
    def lost(self) -> bool:
        return bool(self._conn.is_closed())

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._conn.close(), 5)
