"""Storage: every SQL statement of statehost lives here and in the directory's repositories
(server/store_*.py, see server/store_directory.py), written once for both databases (server/db.py:
SQLite, the embedded default, and PostgreSQL for several nodes).

Decision log:

- **Durability**: a call that returned has committed. On SQLite ``synchronous=FULL`` (the default)
  means the commit reached the disk; ``synchronous=NORMAL`` is a documented setting that may lose
  the last commits on power loss (not on a process crash). Group commit and the rest of each
  backend's transaction handling: server/db.py.
- **Optimistic concurrency**: a round commits only if the instance's ``seq`` is still the one the
  window started from, so two writers (two processes, two nodes) can never both win. On PostgreSQL
  a round also carries its lease (node and epoch): it commits only while that lease is the
  instance's current one (server/leases.py).
- **Schema versions**: numbered files in ``server/migrations`` (and ``server/migrations/postgres``).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from .db import (
    Database,
    IntegrityError,
    Listener,
    PostgresDatabase,
    Row,
    Synchronous,
    Tx,
    latest_schema_version,
    open_database,
)
from .errors import Conflict, Superseded
from .jsoncodec import dumps as _dumps
from .jsoncodec import loads as _loads
from .store_directory import AUTHORITY_CHANNEL, Authority
from .store_instance_admin import InstanceAdminRepository
from .store_machines import MachineRepository, VersionRow
from .store_migrations import MigrationRepository
from .store_orgs import OrgRepository
from .store_providers import ProviderRepository

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

T = TypeVar("T")


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
    context: Any = None
    """The full context after the transition (for allowRead where another node relays it)."""
    version_id: str | None = None
    """The machine version that made it (as read back; a round's own records leave it None)."""


@dataclass(frozen=True)
class Lease:
    """This node's right to run one instance's settle window (server/leases.py)."""

    machine_id: int
    name: str
    node_id: str
    epoch: int


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
    lease: Lease | None = None
    """PostgreSQL: the lease the window holds; the round commits only while it is current."""

    @property
    def new_seq(self) -> int:
        return self.transitions[-1].seq if self.transitions else self.expected_seq


@dataclass(frozen=True)
class _EncodedRound:
    """A round's rows with every JSON value serialised once, before the round is queued for the
    writer (the last transition's state, public context, tags and context serve both its history
    row and the instance row)."""

    transitions: list[tuple[Any, ...]]
    """History rows without their instance id: ``seq, ts, version_id, state_json, event_json,
    public_json, tags_json, done, created_ms, context_json``."""
    state: tuple[Any, ...]
    """The instance row's columns ``seq, ts, persisted_json, inflight_json, state_json,
    context_json, public_json, tags_json, done`` (empty for a round without transitions)."""
    persisted: str
    inflight: str
    now_ms: int
    timers: list[tuple[str, Any, tuple[Any, ...] | None]]
    """The timer ops with their rows: ("set", None, (key, event_json, due_ms, created_ms,
    target_json)) | ("cancel", key, None) | ("cancel_all", None, None)."""


def _encode(commit: RoundCommit, now_ms: int) -> _EncodedRound:
    transitions = []
    last: tuple[Any, ...] = ()
    for t in commit.transitions:
        state, public, tags = _dumps(t.state), _dumps(t.public_context), _dumps(list(t.tags))
        context = _dumps(t.context)
        transitions.append(
            (t.seq, t.ts, commit.version_id, state, _dumps(t.event), public, tags, int(t.done), now_ms, context)
        )
        last = (t, state, public, tags, context)
    persisted = _dumps(commit.persisted)
    inflight = _dumps(commit.persisted.get("inflight", []))
    state_columns: tuple[Any, ...] = ()
    if last:
        t, state, public, tags, context = last
        if commit.context is not t.context:
            context = _dumps(commit.context)
        state_columns = (t.seq, t.ts, persisted, inflight, state, context, public, tags, int(t.done))
    timers: list[tuple[str, Any, tuple[Any, ...] | None]] = []
    for kind, value in commit.timer_ops:
        if kind == "set":
            key = value.key if value.key is not None else f"anonymous:{uuid.uuid4()}"
            target = None if value.target is None else _dumps(value.target)
            timers.append(("set", None, (key, _dumps(value.event), value.due_ms, now_ms, target)))
        else:
            timers.append((kind, value, None))
    return _EncodedRound(transitions, state_columns, persisted, inflight, now_ms, timers)


def _index_key(values: Mapping[str, Sequence[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted((name, tuple(entries)) for name, entries in values.items()))


INDEX_MEMORY = 100_000
"""Instances whose last index entries this process remembers (Store._indexed)."""


@dataclass(frozen=True)
class TimerOwner:
    """The instance a timer belongs to, as it never changes (read with the due timers, so that a
    delivery need not read the instance again before its window does)."""

    machine_id: int
    org_id: str
    machine_slug: str
    name: str


@dataclass(frozen=True)
class TimerRow:
    """A row of the ``timers`` table: ``runtime.TimerRow``'s fields (id, key, event, due_ms, target),
    whose rules ``commit_round`` applies in SQL, and the columns only the server has. The store may
    not import the runtime (tests/test_layering.py), so tests/server/test_timer_rows.py holds the
    two equal: the same fields, and the same rows after the same ops (docs/decisions.md, "Timer rules stated once")."""

    id: int
    instance_id: int
    key: str
    event: dict[str, Any]
    due_ms: int
    attempts: int
    target: dict[str, Any] | None = None
    """None: an event of the instance to itself; else a message to another instance, or a spawn."""
    owner: TimerOwner | None = None
    """Set on the rows of due_timers and claim_due_timers."""


COMMITS_CHANNEL = "statehost_commits"
"""PostgreSQL NOTIFY channel for commit hints: ``<instance id>:<seq>`` pairs, comma-separated."""
_DB_NOW_MS = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
"""PostgreSQL's clock in epoch milliseconds (leases and timer claims use the database's time)."""

_TIMER_COLUMNS = "id, instance_id, timer_key, event_json, due_ms, attempts, target_json"
_DUE_TIMER_COLUMNS = (
    "t.id, t.instance_id, t.timer_key, t.event_json, t.due_ms, t.attempts, t.target_json,"
    " i.machine_id, m.org_id, m.slug AS machine_slug, i.name"
)
"""A due timer with its owner (``timers t JOIN instances i JOIN machines m``)."""


def _timer_row(r: Row) -> TimerRow:
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


def _due_timer_row(r: Row) -> TimerRow:
    owner = TimerOwner(r["machine_id"], r["org_id"], r["machine_slug"], r["name"])
    return dataclasses.replace(_timer_row(r), owner=owner)


class Store:
    def __init__(
        self,
        target: Path | str,
        *,
        synchronous: Synchronous = "FULL",
        group_commit: bool = True,
        max_batch: int = 512,
        pool_size: int = 10,
    ) -> None:
        """``target``: a SQLite file, or a ``postgresql://`` URL (server/db.py)."""
        self.db: Database = open_database(
            target, synchronous=synchronous, group_commit=group_commit, max_batch=max_batch, pool_size=pool_size
        )
        self._last_log_ms = 0
        self._indexed: dict[int, tuple[int, tuple[tuple[str, tuple[str, ...]], ...]]] = {}
        """instance id -> (seq, index entries) that this process committed (commit_round skips
        rewriting entries that did not change)."""
        # The directory, one repository per concern (server/store_directory.py).
        self.authority = Authority(self.shared, on_forget=[self._forget_indexed])
        self.providers = ProviderRepository(self.db, self.authority)
        self.orgs = OrgRepository(self.db, self.authority, self.providers)
        self.machines = MachineRepository(self.db, self.authority)
        self.migrations = MigrationRepository(self.db, self.authority)
        self.instance_admin = InstanceAdminRepository(self.db, self.authority, self._forget_instance)
        # What the instance layer, the timers and the test fixtures read of the directory.
        self.create_org = self.orgs.create_org
        self.create_machine = self.machines.create_machine
        self.create_version = self.machines.create_version
        self.machine_id = self.machines.machine_id
        self.current_version_id = self.machines.current_version_id
        self.get_version = self.machines.get_version
        self.versions_to_warm = self.machines.versions_to_warm
        self.migration = self.migrations.migration
        self.migration_edges = self.migrations.migration_edges
        self.set_desired_version = self.instance_admin.set_desired_version
        self.set_status = self.instance_admin.set_status
        self.delete_instance = self.instance_admin.delete_instance

    @property
    def batches(self) -> int:
        """Transactions committed (bench/ reads it to show batching)."""
        return self.db.batches

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.db.open()
        newest = await self._read_one("SELECT MAX(ts_ms) AS ts FROM logs")
        self._last_log_ms = int(newest["ts"]) if newest is not None and newest["ts"] is not None else 0

    async def close(self) -> None:
        await self.db.close()

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def schema_version(self) -> int:
        return latest_schema_version()

    async def ping(self) -> None:
        """One round trip to the database (raises when it does not answer)."""
        await self._read("SELECT 1")

    # -- transactions -------------------------------------------------------------------------------

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``fn`` inside a write transaction; return once it is durably committed."""
        return await self.db.write(fn)

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self.db.read(sql, params)

    async def _read_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self._read(sql, params)
        return rows[0] if rows else None

    # -- instances ----------------------------------------------------------------------------------

    _INSTANCE_COLUMNS = (
        "i.id, i.machine_id, m.org_id, m.slug AS machine_slug, i.name, i.version_id, i.desired_version_id,"
        " i.status, i.seq, i.ts, i.persisted_json, i.state_json, i.context_json, i.public_json, i.tags_json,"
        " i.done, i.created_ms, i.parent_json"
    )

    @staticmethod
    def _instance(row: Row) -> InstanceRow:
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
            persisted=_loads(row["persisted_json"]),
            state=_loads(row["state_json"]),
            context=_loads(row["context_json"]),
            public_context=_loads(row["public_json"]),
            tags=_loads(row["tags_json"]),
            done=bool(row["done"]),
            created_ms=row["created_ms"],
            parent=None if row["parent_json"] is None else _loads(row["parent_json"]),
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
        encoded = _encode(commit, now_ms)
        parent_json = None if parent is None else _dumps(parent)
        index_key = None if commit.index_values is None else _index_key(commit.index_values)

        async def op(tx: Tx) -> int:
            await self._fence(tx, commit)
            try:
                row = await tx.fetchone(
                    "INSERT INTO instances (machine_id, name, version_id, seq, ts, persisted_json, inflight_json,"
                    " state_json, context_json, public_json, tags_json, done, created_ms, parent_json)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (machine_id, name, commit.version_id, *encoded.state, now_ms, parent_json),
                )
            except IntegrityError as exc:
                raise Conflict(f"instance {name!r} already exists") from exc
            assert row is not None
            commit.instance_id = int(row["id"])
            await self._write_round_rows(tx, commit, encoded, index_key, fresh=True)
            return commit.instance_id

        instance_id = await self.write(op)
        self._remember_index(instance_id, commit.new_seq, index_key or ())
        return instance_id

    async def commit_round(self, commit: RoundCommit, now_ms: int) -> None:
        """Write one round; Conflict if the instance moved on (or vanished) since ``expected_seq``.

        The statements of a round with one transition and nothing else to write: the instance's
        UPDATE and its history INSERT (tests/server/test_commit_path.py pins the count)."""
        encoded = _encode(commit, now_ms)
        index_key = None if commit.index_values is None else _index_key(commit.index_values)
        # The instance's entries are replaced only when they change: this process remembers what it
        # wrote at which seq, and the round commits only from that seq (so nobody wrote since).
        known = self._indexed.get(commit.instance_id)
        replace = index_key if index_key is not None and known != (commit.expected_seq, index_key) else None
        if index_key is None and known is not None and known[0] == commit.expected_seq:
            index_key = known[1]  # unchanged: still known after this round

        async def op(tx: Tx) -> None:
            await self._fence(tx, commit)
            if encoded.state:
                changed = await tx.execute(
                    "UPDATE instances SET seq = ?, ts = ?, persisted_json = ?, inflight_json = ?, state_json = ?,"
                    " context_json = ?, public_json = ?, tags_json = ?, done = ?, version_id = ?,"
                    # an upgrade that reached the desired version clears it
                    " desired_version_id = CASE WHEN desired_version_id = ? THEN NULL ELSE desired_version_id END"
                    " WHERE id = ? AND seq = ?",
                    (*encoded.state, commit.version_id, commit.version_id, commit.instance_id, commit.expected_seq),
                )
            else:
                changed = await tx.execute(
                    "UPDATE instances SET persisted_json = ?, inflight_json = ? WHERE id = ? AND seq = ?",
                    (encoded.persisted, encoded.inflight, commit.instance_id, commit.expected_seq),
                )
            if changed != 1:
                raise Superseded(
                    f"instance {commit.instance_name!r} changed since seq {commit.expected_seq}; try again"
                )
            await self._write_round_rows(tx, commit, encoded, replace)

        try:
            await self.write(op)
        except BaseException:
            self._indexed.pop(commit.instance_id, None)
            raise
        if index_key is not None:
            self._remember_index(commit.instance_id, commit.new_seq, index_key)
        else:
            self._indexed.pop(commit.instance_id, None)

    def _remember_index(self, instance_id: int, seq: int, key: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
        if len(self._indexed) >= INDEX_MEMORY:
            self._indexed.clear()
        self._indexed[instance_id] = (seq, key)

    def _forget_instance(self, instance_id: int) -> None:
        self._indexed.pop(instance_id, None)

    def _forget_indexed(self, notice: str) -> None:
        """A machine (and its instances) deleted: SQLite may give a later instance a freed id."""
        if notice == "*" or notice.startswith("machine:"):
            self._indexed.clear()

    @staticmethod
    async def _fence(tx: Tx, commit: RoundCommit) -> None:
        """Conflict unless the window's lease is still the instance's current one. FOR SHARE keeps
        another node from taking the lease over until this transaction ends (fencing)."""
        lease = commit.lease
        if lease is None:
            return
        held = await tx.fetchone(
            "SELECT epoch FROM instance_leases WHERE machine_id = ? AND name = ? AND node_id = ? AND epoch = ?"
            " FOR SHARE",
            (lease.machine_id, lease.name, lease.node_id, lease.epoch),
        )
        if held is None:
            raise Superseded(f"instance {lease.name!r}: this node's lease was taken over by another node; try again")

    async def _write_round_rows(
        self,
        tx: Tx,
        commit: RoundCommit,
        encoded: _EncodedRound,
        index_key: tuple[tuple[str, tuple[str, ...]], ...] | None,
        *,
        fresh: bool = False,
    ) -> None:
        """The round's rows besides the instance's own; ``index_key``: the index entries to write in
        place of the instance's (None: they stay as they are); ``fresh``: a new instance (no entries
        to delete)."""
        instance_id = commit.instance_id
        # The delivered timer goes first, before the round's own timer changes (a cancel of the same
        # id must not reach it). A timer that is gone was delivered or withdrawn already: the round
        # must not commit (a timer fires once in effect, even when two nodes race).
        timer = commit.delete_timer_id
        if timer is not None and await tx.execute("DELETE FROM timers WHERE id = ?", (timer,)) != 1:
            raise Conflict("the timer was delivered or cancelled meanwhile")
        if encoded.transitions:
            sql = (
                "INSERT INTO transitions (instance_id, seq, ts, version_id, state_json, event_json, public_json,"
                " tags_json, done, created_ms, context_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )
            if len(encoded.transitions) == 1:
                await tx.execute(sql, (instance_id, *encoded.transitions[0]))
            else:
                await tx.executemany(sql, [(instance_id, *row) for row in encoded.transitions])
        for kind, value, row in encoded.timers:
            if kind == "set":
                assert row is not None
                await tx.execute(
                    "INSERT INTO timers (instance_id, timer_key, event_json, due_ms, created_ms, target_json)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (instance_id, *row),
                )
            elif kind == "cancel":
                # The rules of runtime.apply_timer_op, in SQL (tests/server/test_timer_rows.py).
                # XState's cancel(id) reaches the most recent delayed event with that id only.
                await tx.execute(
                    "DELETE FROM timers WHERE id = (SELECT id FROM timers WHERE instance_id = ? AND timer_key = ?"
                    " ORDER BY id DESC LIMIT 1)",
                    (instance_id, value),
                )
            else:
                # The instance stopped: its own timers and its delayed messages go; messages it already
                # sent (due now) stay sent.
                await tx.execute(
                    "DELETE FROM timers WHERE instance_id = ? AND (target_json IS NULL OR due_ms > ?)",
                    (instance_id, encoded.now_ms),
                )
        if index_key is not None:
            if not fresh:
                await tx.execute("DELETE FROM index_entries WHERE instance_id = ?", (instance_id,))
            rows = [(instance_id, name, value) for name, values in index_key for value in values]
            if rows:
                await tx.executemany(
                    "INSERT INTO index_entries (instance_id, index_name, value) VALUES (?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    rows,
                )
        if commit.logs:
            await self._insert_logs(
                tx, commit.org_id, commit.machine_slug, commit.instance_name, commit.version_id, commit.logs
            )

    async def transitions(self, instance_id: int, after_seq: int = 0, limit: int = 100) -> list[TransitionRecord]:
        rows = await self._read(
            "SELECT seq, ts, state_json, event_json, public_json, tags_json, done, context_json, version_id"
            " FROM transitions"
            " WHERE instance_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (instance_id, after_seq, limit),
        )
        return [
            TransitionRecord(
                r["seq"],
                r["ts"],
                _loads(r["state_json"]),
                _loads(r["event_json"]),
                _loads(r["public_json"]),
                _loads(r["tags_json"]),
                bool(r["done"]),
                None if r["context_json"] is None else _loads(r["context_json"]),
                r["version_id"],
            )
            for r in rows
        ]

    # -- timers ---------------------------------------------------------------------------------------

    async def next_timer_due(self, exclude: Iterable[int] = ()) -> int | None:
        excluded = list(exclude)
        marks = ",".join("?" * len(excluded))
        # Timers another node claimed are its to deliver (or to be found by polling once it lapses).
        where = f"AND id NOT IN ({marks})" if excluded else ""
        row = await self._read_one(f"SELECT MIN(due_ms) AS due FROM timers WHERE claimed_by IS NULL {where}", excluded)
        return None if row is None or row["due"] is None else int(row["due"])

    async def due_timers(self, now_ms: int, limit: int, exclude: Iterable[int] = ()) -> list[TimerRow]:
        excluded = list(exclude)
        marks = ",".join("?" * len(excluded))
        extra = f"AND t.id NOT IN ({marks})" if excluded else ""
        rows = await self._read(
            f"SELECT {_DUE_TIMER_COLUMNS} FROM timers t JOIN instances i ON i.id = t.instance_id"
            f" JOIN machines m ON m.id = i.machine_id WHERE t.due_ms <= ? {extra} ORDER BY t.due_ms, t.id LIMIT ?",
            (now_ms, *excluded, limit),
        )
        return [_due_timer_row(r) for r in rows]

    async def instances_by_keys(self, keys: Sequence[tuple[int, str]]) -> dict[tuple[int, str], InstanceRow]:
        """The instances a batch of due timers goes to, in one read per machine: (machine id, name)
        -> row (absent: no such instance). ``machine_id = ? AND name IN (...)`` searches the
        (machine_id, name) index; a row-value ``IN (VALUES ...)`` would scan the table."""
        names: dict[int, set[str]] = {}
        for machine_id, name in keys:
            names.setdefault(machine_id, set()).add(name)
        found: dict[tuple[int, str], InstanceRow] = {}
        for machine_id, wanted in names.items():
            ordered = sorted(wanted)
            for start in range(0, len(ordered), 500):  # far below SQLite's bound on parameters
                chunk = ordered[start : start + 500]
                rows = await self._read(
                    f"SELECT {self._INSTANCE_COLUMNS} FROM instances i JOIN machines m ON m.id = i.machine_id"
                    f" WHERE i.machine_id = ? AND i.name IN ({','.join('?' * len(chunk))})",
                    [machine_id, *chunk],
                )
                for row in rows:
                    instance = self._instance(row)
                    found[(instance.machine_id, instance.name)] = instance
        return found

    async def timer_exists(self, timer_id: int) -> bool:
        return await self._read_one("SELECT 1 FROM timers WHERE id = ?", (timer_id,)) is not None

    async def timers_of(self, instance_id: int) -> list[TimerRow]:
        rows = await self._read(
            f"SELECT {_TIMER_COLUMNS} FROM timers WHERE instance_id = ? ORDER BY due_ms, id", (instance_id,)
        )
        return [_timer_row(r) for r in rows]

    async def retry_timer(self, timer_id: int, due_ms: int, attempts: int) -> None:
        async def op(tx: Tx) -> None:
            await tx.execute(
                "UPDATE timers SET due_ms = ?, attempts = ?, claimed_by = NULL, claim_until = NULL WHERE id = ?",
                (due_ms, attempts, timer_id),
            )

        await self.write(op)

    async def drop_timer(self, timer_id: int, log: tuple[str, str, str | None, str | None, LogRecord] | None) -> None:
        """Delete a timer that will not be delivered, with the log line that says why."""

        async def op(tx: Tx) -> None:
            await tx.execute("DELETE FROM timers WHERE id = ?", (timer_id,))
            if log is not None:
                org_id, machine_slug, instance_name, version_id, line = log
                await self._insert_logs(tx, org_id, machine_slug, instance_name, version_id, [line])

        await self.write(op)

    # -- several nodes (PostgreSQL) ------------------------------------------------------------------
    # Times here are the database's clock, not the node's: nodes need not agree on the time.
    # Lease and claim writes are single statements that commit without waiting for the WAL flush
    # (synchronous_commit off; a round's own commit flushes them anyway). One lost in a database
    # crash is harmless: a commit fenced on a lost epoch is refused (the fence checks the node
    # too), a lost release or claim lapses, a timer delivered twice commits once. A window thus
    # costs two extra round trips, not two extra flushed transactions.

    @property
    def shared(self) -> bool:
        """Several nodes may share this database (leases, timer claims and commit hints apply)."""
        return self.db.kind == "postgres"

    async def acquire_lease(self, machine_id: int, name: str, node_id: str, ttl_ms: int) -> Lease | None:
        """Take the instance's lease if it is free, released, lapsed, or already this node's; each
        acquisition bumps its epoch. None while another node holds it."""
        rows = await self._relaxed(
            "INSERT INTO instance_leases (machine_id, name, node_id, epoch, expires_ms)"
            f" VALUES (?, ?, ?, 1, {_DB_NOW_MS} + ?) ON CONFLICT (machine_id, name) DO UPDATE"
            " SET node_id = EXCLUDED.node_id, epoch = instance_leases.epoch + 1, expires_ms = EXCLUDED.expires_ms"
            f" WHERE instance_leases.expires_ms < {_DB_NOW_MS} OR instance_leases.node_id = EXCLUDED.node_id"
            " RETURNING epoch",
            (machine_id, name, node_id, ttl_ms),
        )
        return Lease(machine_id, name, node_id, int(rows[0]["epoch"])) if rows else None

    async def release_lease(self, lease: Lease) -> None:
        await self._relaxed(
            "UPDATE instance_leases SET expires_ms = 0 WHERE machine_id = ? AND name = ? AND node_id = ? AND epoch = ?",
            (lease.machine_id, lease.name, lease.node_id, lease.epoch),
        )

    async def renew_leases(self, node_id: str, held: Sequence[tuple[int, str]], ttl_ms: int) -> int:
        """Extend the leases this node holds for its open windows; how many it still had."""
        if not held:
            return 0
        rows = await self._relaxed(
            f"UPDATE instance_leases SET expires_ms = {_DB_NOW_MS} + ? WHERE node_id = ? AND expires_ms > 0"
            " AND (machine_id, name) IN (SELECT * FROM unnest(?::BIGINT[], ?::TEXT[])) RETURNING epoch",
            (ttl_ms, node_id, [m for m, _ in held], [n for _, n in held]),
        )
        return len(rows)

    async def _relaxed(self, sql: str, params: Sequence[Any]) -> list[Row]:
        assert isinstance(self.db, PostgresDatabase)
        return await self.db.relaxed(sql, params)

    async def lease_counts(self, node_id: str) -> dict[str, int]:
        """Live leases: held by this node, and by all nodes."""
        row = await self._read_one(
            f"SELECT COUNT(*) FILTER (WHERE node_id = ?) AS mine, COUNT(*) AS total FROM instance_leases"
            f" WHERE expires_ms > {_DB_NOW_MS}",
            (node_id,),
        )
        return {"held": int(row["mine"]) if row else 0, "all_nodes": int(row["total"]) if row else 0}

    async def orphaned_instances(self, limit: int) -> list[tuple[int, str]]:
        """Instances whose lease lapsed unreleased (their node died) and that had services running
        when it did: (machine id, name)."""
        rows = await self._read(
            "SELECT l.machine_id, l.name FROM instance_leases l"
            " JOIN instances i ON i.machine_id = l.machine_id AND i.name = l.name"
            f" WHERE l.expires_ms > 0 AND l.expires_ms < {_DB_NOW_MS} AND i.inflight_json <> '[]' LIMIT ?",
            (limit,),
        )
        return [(int(r["machine_id"]), str(r["name"])) for r in rows]

    async def claim_due_timers(
        self, now_ms: int, limit: int, node_id: str, ttl_ms: int, exclude: Iterable[int] = ()
    ) -> list[TimerRow]:
        """Claim due timers nobody else holds (SKIP LOCKED: racing nodes claim disjoint rows); a
        claim lapses after ``ttl_ms`` unless the timer was delivered, retried or dropped first.
        ``exclude``: timers this node is delivering already; they are neither returned nor claimed
        again (a claim taken on a row that the caller then skips would hold it from every node
        until it lapsed)."""
        excluded = list(exclude)
        extra = f" AND id NOT IN ({','.join('?' * len(excluded))})" if excluded else ""
        rows = await self._relaxed(
            f"UPDATE timers t SET claimed_by = ?, claim_until = {_DB_NOW_MS} + ? FROM instances i, machines m"
            " WHERE i.id = t.instance_id AND m.id = i.machine_id AND t.id IN ("
            f" SELECT id FROM timers WHERE due_ms <= ?{extra}"
            f" AND (claim_until IS NULL OR claim_until < {_DB_NOW_MS})"
            " ORDER BY due_ms, id LIMIT ? FOR UPDATE SKIP LOCKED)"
            f" RETURNING {_DUE_TIMER_COLUMNS}",
            (node_id, ttl_ms, now_ms, *excluded, limit),
        )
        return sorted((_due_timer_row(r) for r in rows), key=lambda t: (t.due_ms, t.id))

    async def release_timer_claims(self, node_id: str) -> None:
        """On a clean stop: timers this node claimed and did not deliver go back to all nodes."""

        async def op(tx: Tx) -> None:
            await tx.execute("UPDATE timers SET claimed_by = NULL, claim_until = NULL WHERE claimed_by = ?", (node_id,))

        await self.write(op)

    async def notify_commits(self, payload: str) -> None:
        assert isinstance(self.db, PostgresDatabase)
        await self.db.notify(COMMITS_CHANNEL, payload)

    async def listen_commits(self, callback: Callable[[str], None]) -> Listener:
        assert isinstance(self.db, PostgresDatabase)
        return await self.db.listen(COMMITS_CHANNEL, callback)

    async def listen_authority(self, callback: Callable[[str], None]) -> Listener:
        """Deletions of authority committed by any node (``Authority.forget`` notices)."""
        assert isinstance(self.db, PostgresDatabase)
        return await self.db.listen(AUTHORITY_CHANNEL, callback)

    async def instance_seqs(self, instance_ids: Sequence[int]) -> dict[int, int]:
        """The current seq of each of these instances (a subscriber's node checks for missed hints)."""
        if not instance_ids:
            return {}
        marks = ",".join("?" * len(instance_ids))
        rows = await self._read(f"SELECT id, seq FROM instances WHERE id IN ({marks})", list(instance_ids))
        return {int(r["id"]): int(r["seq"]) for r in rows}

    # -- logs -------------------------------------------------------------------------------------------

    async def _insert_logs(
        self,
        tx: Tx,
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
        await tx.executemany(
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

        async def op(tx: Tx) -> None:
            await self._insert_logs(tx, org_id, machine_slug, instance_name, version_id, lines)

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
    ) -> list[Row]:
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
        return await self._read(f"SELECT * FROM ({sql}) AS page WHERE ts_ms = ?", [*params, cut])

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
