"""The instances' directory views (wire-api 3.8-3.9): the list of a machine's instances, an
instance's history, its status, its desired version, its deletion. A repository of the directory
(server/store_directory.py); the instances' state and rounds are server/store.py's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .db import Database, Tx
from .errors import NotFound
from .store_directory import Authority, Page, Repository
from .store_machines import VersionInfo

__all__ = ["InstanceAdminRepository", "InstanceSummary", "TransitionSummary"]


@dataclass(frozen=True)
class InstanceSummary:
    """An instance as its machine's list shows it."""

    id: int
    name: str
    status: str
    created_ms: int
    version: VersionInfo


@dataclass(frozen=True)
class TransitionSummary:
    """One transition of an instance's history."""

    seq: int
    created_ms: int
    state: Any
    event: Any


class InstanceAdminRepository(Repository):
    def __init__(self, db: Database, authority: Authority, on_delete: Callable[[int], None]) -> None:
        super().__init__(db, authority)
        self._on_delete = on_delete
        """Told of each deleted instance's id (the store forgets what it remembers of it)."""

    async def instances_page(self, machine_id: int, cursor: str | None) -> Page[InstanceSummary]:
        return await self._page(
            "SELECT i.id, i.name, i.status, i.created_ms, v.id AS version_id, v.created_ms AS version_created_ms,"
            " v.client_info FROM instances i JOIN machine_versions v ON v.id = i.version_id WHERE i.machine_id = ?",
            [machine_id],
            cursor,
            "id",
            lambda r: InstanceSummary(
                r["id"],
                r["name"],
                r["status"],
                r["created_ms"],
                VersionInfo(r["version_id"], r["version_created_ms"], r["client_info"]),
            ),
        )

    async def transitions_page(self, instance_id: int, cursor: str | None) -> Page[TransitionSummary]:
        return await self._page(
            "SELECT seq AS id, created_ms, state_json, event_json FROM transitions WHERE instance_id = ?",
            [instance_id],
            cursor,
            "id",
            lambda r: TransitionSummary(
                r["id"], r["created_ms"], json.loads(r["state_json"]), json.loads(r["event_json"])
            ),
        )

    async def set_desired_version(self, instance_id: int, version_id: str | None) -> None:
        async def op(tx: Tx) -> None:
            await tx.execute("UPDATE instances SET desired_version_id = ? WHERE id = ?", (version_id, instance_id))

        await self.write(op)

    async def set_status(self, instance_id: int, status: Literal["running", "paused"]) -> None:
        async def op(tx: Tx) -> None:
            if await tx.execute("UPDATE instances SET status = ? WHERE id = ?", (status, instance_id)) != 1:
                raise NotFound("instance not found")

        await self.write(op)

    async def delete_instance(self, instance_id: int) -> None:
        async def op(tx: Tx) -> None:
            await tx.execute("DELETE FROM instances WHERE id = ?", (instance_id,))

        self._on_delete(instance_id)  # SQLite may give a later instance this id
        await self.write(op)
