"""Migrations between versions of a machine (wire-api 3.7): provisional, upload, finalize, as
versions; and the edges an upgrade's chain is found in. A repository of the directory
(server/store_directory.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .db import Tx
from .errors import Conflict
from .ids import new_id
from .store_directory import Repository

__all__ = ["MigrationRepository", "MigrationRow"]


@dataclass(frozen=True)
class MigrationRow:
    id: str
    machine_id: int
    from_version_id: str
    to_version_id: str
    final: bool
    source: bytes | None
    source_name: str | None
    bundle: str | None
    bundle_hash: str | None


class MigrationRepository(Repository):
    async def create_provisional_migration(self, machine_id: int, from_id: str, to_id: str, now_ms: int) -> str:
        migration_id = new_id("mig")

        async def op(tx: Tx) -> str:
            await tx.execute(
                "INSERT INTO migrations (id, machine_id, from_version_id, to_version_id, status, created_ms)"
                " VALUES (?, ?, ?, ?, 'provisional', ?)",
                (migration_id, machine_id, from_id, to_id, now_ms),
            )
            return migration_id

        return await self.write(op)

    async def store_migration_upload(self, migration_id: str, source: bytes, source_name: str) -> None:
        """Attach uploaded code to a provisional migration (once)."""

        async def op(tx: Tx) -> None:
            changed = await tx.execute(
                "UPDATE migrations SET source = ?, source_name = ?"
                " WHERE id = ? AND status = 'provisional' AND source IS NULL",
                (source, source_name, migration_id),
            )
            if changed != 1:
                raise Conflict("this upload URL was already used, or its migration is finalized")

        await self.write(op)

    async def migration(self, migration_id: str) -> MigrationRow | None:
        row = await self._read_one(
            "SELECT id, machine_id, from_version_id, to_version_id, status, source, source_name, bundle, bundle_hash"
            " FROM migrations WHERE id = ?",
            (migration_id,),
        )
        if row is None:
            return None
        return MigrationRow(
            row["id"],
            row["machine_id"],
            row["from_version_id"],
            row["to_version_id"],
            row["status"] == "final",
            None if row["source"] is None else bytes(row["source"]),
            row["source_name"],
            row["bundle"],
            row["bundle_hash"],
        )

    async def finalize_migration(self, migration_id: str, *, bundle: str, bundle_hash: str) -> None:
        async def op(tx: Tx) -> None:
            changed = await tx.execute(
                "UPDATE migrations SET status = 'final', bundle = ?, bundle_hash = ?"
                " WHERE id = ? AND status = 'provisional'",
                (bundle, bundle_hash, migration_id),
            )
            if changed != 1:
                raise Conflict("this migration is already finalized")

        await self.write(op)

    async def migration_edges(self, machine_id: int) -> list[tuple[str, str, str]]:
        """(from version, to version, migration id) of every finalized migration, newest first."""
        rows = await self._read(
            "SELECT id, from_version_id, to_version_id FROM migrations WHERE machine_id = ? AND status = 'final'"
            " ORDER BY created_ms DESC, rowid DESC",
            (machine_id,),
        )
        return [(r["from_version_id"], r["to_version_id"], r["id"]) for r in rows]
