"""Machines, their versions, the versions' index selectors and the index query: a repository of the
directory (server/store_directory.py)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .db import IntegrityError, Row, Tx
from .errors import Conflict, InvalidParameter, NotFound
from .ids import new_id
from .jsoncodec import dumps as _dumps
from .store_directory import Page, Repository

__all__ = [
    "INDEX_OPERATORS",
    "MachineRepository",
    "MachineRow",
    "MachineSummary",
    "ProvisionalVersion",
    "VersionInfo",
    "VersionRow",
]

MACHINE_ID_TTL_S = 2.0
MACHINE_ID_CACHE = 10_000


@dataclass(frozen=True)
class VersionInfo:
    """A version as lists and references show it."""

    id: str
    created_ms: int
    client_info: str


@dataclass(frozen=True)
class VersionRow:
    """A finalized version, with its bundle."""

    id: str
    machine_id: int
    xstate_major: int | None
    bundle: str | None
    bundle_hash: str | None
    self_contained: bool
    client_info: str
    created_ms: int


@dataclass(frozen=True)
class ProvisionalVersion:
    """A version between its creation and its finalization (wire-api 3.6), with the uploaded code."""

    id: str
    machine_id: int
    final: bool
    source: bytes | None
    source_name: str | None


@dataclass(frozen=True)
class MachineRow:
    id: int
    org_id: str
    slug: str
    indexes: list[str]
    current_version_id: str | None
    created_ms: int


@dataclass(frozen=True)
class MachineSummary:
    """A machine as its org's list shows it."""

    id: int
    slug: str
    created_ms: int
    current_version: VersionInfo | None


INDEX_OPERATORS = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
"""The index query's ``op`` values and their SQL operators (wire-api 3.10)."""


def encode_index_cursor(value: str, name: str) -> str:
    return base64.urlsafe_b64encode(_dumps([value, name]).encode()).rstrip(b"=").decode()


def decode_index_cursor(cursor: str | None) -> tuple[str, str] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value, name = json.loads(raw)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidParameter("the cursor is not one this server issued", parameter="cursor") from exc
    if not isinstance(value, str) or not isinstance(name, str):
        raise InvalidParameter("the cursor is not one this server issued", parameter="cursor")
    return value, name


def _machine_summary(r: Row) -> MachineSummary:
    current = None
    if r["current_version_id"]:
        current = VersionInfo(r["current_version_id"], r["version_created_ms"], r["client_info"] or "")
    return MachineSummary(r["id"], r["slug"], r["created_ms"], current)


def _version_info(r: Row) -> VersionInfo:
    return VersionInfo(r["id"], r["created_ms"], r["client_info"])


class MachineRepository(Repository):
    # -- machines -------------------------------------------------------------------------------------

    async def create_machine(self, org_id: str, slug: str, indexes: Sequence[str], now_ms: int) -> int:
        async def op(tx: Tx) -> int:
            try:
                row = await tx.fetchone(
                    "INSERT INTO machines (org_id, slug, indexes_json, created_ms) VALUES (?, ?, ?, ?) RETURNING id",
                    (org_id, slug, _dumps(list(indexes)), now_ms),
                )
            except IntegrityError as exc:
                raise Conflict(f"machine {slug!r} already exists") from exc
            assert row is not None
            return int(row["id"])

        return await self.write(op)

    async def machine(self, org_id: str, slug: str) -> MachineRow:
        row = await self._read_one(
            "SELECT id, org_id, slug, indexes_json, current_version_id, created_ms FROM machines"
            " WHERE org_id = ? AND slug = ?",
            (org_id, slug),
        )
        if row is None:
            raise NotFound(f"machine {slug!r} not found")
        return MachineRow(
            row["id"],
            row["org_id"],
            row["slug"],
            json.loads(row["indexes_json"]),
            row["current_version_id"],
            row["created_ms"],
        )

    async def machine_id(self, org_id: str, slug: str) -> int:
        """The machine's id; remembered for MACHINE_ID_TTL_S, so that a burst of requests to one
        machine reaches the instances' inboxes in the order it arrived (no read to overtake) and
        without a read each. Deleting a machine forgets it here, and on other nodes when its notice
        arrives (``Authority.forget``), at the latest after the TTL (a lost notice)."""
        key = (org_id, slug)
        cache = self.authority.machine_ids
        cached = cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        generation = self.authority.generation
        row = await self._read_one("SELECT id FROM machines WHERE org_id = ? AND slug = ?", (org_id, slug))
        if row is None:
            raise NotFound(f"machine {slug!r} not found")
        if len(cache) >= MACHINE_ID_CACHE:
            cache.clear()
        if generation == self.authority.generation:  # no deletion overtook the read
            cache[key] = (int(row["id"]), time.monotonic() + MACHINE_ID_TTL_S)
        return int(row["id"])

    async def machines_page(self, org_id: str, cursor: str | None) -> Page[MachineSummary]:
        return await self._page(
            "SELECT m.id, m.slug, m.created_ms, m.current_version_id, v.created_ms AS version_created_ms,"
            " v.client_info FROM machines m LEFT JOIN machine_versions v ON v.id = m.current_version_id"
            " WHERE m.org_id = ?",
            [org_id],
            cursor,
            "id",
            _machine_summary,
        )

    async def delete_machine(self, machine_id: int) -> None:
        async def op(tx: Tx) -> None:
            if await tx.fetchone("SELECT 1 FROM instances WHERE machine_id = ? LIMIT 1", (machine_id,)) is not None:
                raise Conflict("the machine still has instances; delete them first")
            await tx.execute("UPDATE machines SET current_version_id = NULL WHERE id = ?", (machine_id,))
            await tx.execute("DELETE FROM machines WHERE id = ?", (machine_id,))
            await self.authority.announce(tx, f"machine:{machine_id}")

        await self.write(op)
        self.authority.forget(f"machine:{machine_id}")

    # -- versions -------------------------------------------------------------------------------------

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
        """A finalized version in one step (tests and tools; the API goes provisional -> upload -> final)."""
        version_id = new_id("ver")

        async def op(tx: Tx) -> str:
            await tx.execute(
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
                await tx.execute("UPDATE machines SET current_version_id = ? WHERE id = ?", (version_id, machine_id))
            return version_id

        return await self.write(op)

    async def current_version_id(self, machine_id: int) -> str | None:
        row = await self._read_one("SELECT current_version_id FROM machines WHERE id = ?", (machine_id,))
        return None if row is None else row["current_version_id"]

    async def versions_to_warm(self, limit: int) -> list[str]:
        """The current versions of machines that have instances, newest deployment first (at most
        ``limit``): what a starting node prepares before it reports ready. One index probe per
        machine (no scan of the instances: nothing indexes their last use)."""
        rows = await self._read(
            "SELECT v.id FROM machines m JOIN machine_versions v ON v.id = m.current_version_id"
            " WHERE v.status = 'final' AND EXISTS (SELECT 1 FROM instances i WHERE i.machine_id = m.id)"
            " ORDER BY v.created_ms DESC, v.id LIMIT ?",
            (limit,),
        )
        return [row["id"] for row in rows]

    async def get_version(self, version_id: str) -> VersionRow:
        """A finalized version; NotFound for an unknown or provisional one."""
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

    async def version_info(self, version_id: str | None) -> VersionInfo | None:
        if version_id is None:
            return None
        row = await self._read_one(
            "SELECT id, created_ms, client_info FROM machine_versions WHERE id = ?", (version_id,)
        )
        return None if row is None else _version_info(row)

    async def versions_page(self, machine_id: int, cursor: str | None) -> Page[VersionInfo]:
        return await self._page(
            "SELECT id, created_ms, client_info FROM machine_versions WHERE machine_id = ? AND status = 'final'",
            [machine_id],
            cursor,
            "id",
            _version_info,
        )

    async def create_provisional_version(self, machine_id: int, now_ms: int) -> str:
        version_id = new_id("ver")

        async def op(tx: Tx) -> str:
            await tx.execute(
                "INSERT INTO machine_versions (id, machine_id, status, created_ms) VALUES (?, ?, 'provisional', ?)",
                (version_id, machine_id, now_ms),
            )
            return version_id

        return await self.write(op)

    async def store_upload(self, version_id: str, source: bytes, source_name: str) -> None:
        """Attach uploaded code to a provisional version (once)."""

        async def op(tx: Tx) -> None:
            changed = await tx.execute(
                "UPDATE machine_versions SET source = ?, source_name = ?"
                " WHERE id = ? AND status = 'provisional' AND source IS NULL",
                (source, source_name, version_id),
            )
            if changed != 1:
                raise Conflict("this upload URL was already used, or its version is finalized")

        await self.write(op)

    async def provisional_version(self, version_id: str) -> ProvisionalVersion | None:
        row = await self._read_one(
            "SELECT id, machine_id, status, source, source_name FROM machine_versions WHERE id = ?", (version_id,)
        )
        if row is None:
            return None
        source = None if row["source"] is None else bytes(row["source"])
        return ProvisionalVersion(row["id"], row["machine_id"], row["status"] == "final", source, row["source_name"])

    async def finalize_version(
        self,
        version_id: str,
        *,
        bundle: str,
        bundle_hash: str,
        xstate_major: int,
        self_contained: bool,
        client_info: str,
        index_selectors: Mapping[str, str],
        make_current: bool,
    ) -> None:
        async def op(tx: Tx) -> None:
            changed = await tx.execute(
                "UPDATE machine_versions SET status = 'final', bundle = ?, bundle_hash = ?, xstate_major = ?,"
                " runtime_api = ?, client_info = ?, index_selectors_json = ? WHERE id = ? AND status = 'provisional'",
                (
                    bundle,
                    bundle_hash,
                    xstate_major,
                    int(self_contained),
                    client_info,
                    _dumps(dict(index_selectors)),
                    version_id,
                ),
            )
            if changed != 1:
                raise Conflict("this version is already finalized")
            if make_current:
                await tx.execute(
                    "UPDATE machines SET current_version_id = ?"
                    " WHERE id = (SELECT machine_id FROM machine_versions WHERE id = ?)",
                    (version_id, version_id),
                )

        await self.write(op)

    # -- indexes (wire-api 3.10) ----------------------------------------------------------------------
    # The entries themselves are written by Store.commit_round (RoundCommit.index_values), in the
    # transaction of the round that produced them.

    async def version_selectors(self, version_id: str | None) -> dict[str, str]:
        """A version's index selectors (index name -> JSONPath); {} for no or an unknown version."""
        if version_id is None:
            return {}
        row = await self._read_one("SELECT index_selectors_json FROM machine_versions WHERE id = ?", (version_id,))
        if row is None:
            return {}
        selectors = json.loads(row["index_selectors_json"])
        return {str(k): v for k, v in selectors.items() if isinstance(v, str)} if isinstance(selectors, dict) else {}

    async def index_query(
        self,
        machine_id: int,
        index: str,
        op: str | None,
        value: str | None,
        descending: bool,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[tuple[str, str]], str | None]:
        """One page of ``index`` of a machine: (index value, instance name) pairs, in (value, name) order.

        ``op`` (a key of :data:`INDEX_OPERATORS`) compares each entry's value with ``value``; None
        selects every entry. Values compare as SQLite's BINARY collation does, i.e. by Unicode code
        point. Keyset pagination on (value, name), which is unique within an index: the cursor is
        the base64url of the page's last pair, so paging neither repeats nor skips an entry that
        did not change in between. The next cursor is None on the last page.
        """
        after = decode_index_cursor(cursor)
        where = ["i.machine_id = ?", "e.index_name = ?"]
        params: list[Any] = [machine_id, index]
        if op is not None:
            where.append(f"e.value {INDEX_OPERATORS[op]} ?")
            params.append(value)
        if after is not None:
            where.append(f"(e.value, i.name) {'<' if descending else '>'} (?, ?)")
            params.extend(after)
        order = "DESC" if descending else "ASC"
        rows = await self._read(
            "SELECT e.value AS value, i.name AS name FROM index_entries e JOIN instances i ON i.id = e.instance_id"
            f" WHERE {' AND '.join(where)} ORDER BY e.value {order}, i.name {order} LIMIT ?",
            [*params, limit + 1],
        )
        pairs = [(str(r["value"]), str(r["name"])) for r in rows[:limit]]
        more = len(rows) > limit
        return pairs, (encode_index_cursor(*pairs[-1]) if more and pairs else None)
