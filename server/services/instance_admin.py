"""An instance's administration (wire-api 3.8-3.9): creation at a given version, the machine's list,
the history, the admin view, the desired version, the status, the deletion; and the state a
real-time subscriber starts from (wire-api 4). Events and reads go to the InstanceService itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InvalidParameter, NotFound, Rejected
from ..instances import InstanceService, InstanceState
from ..store import InstanceRow, Store
from ..store_directory import Page
from ..store_instance_admin import InstanceSummary, TransitionSummary
from ..store_machines import VersionInfo
from ..upgrades import migration_chain
from .machines import Confirmation

__all__ = ["InstanceAdmin", "InstanceAdminView", "InstanceSummary", "NoMigrationPath", "TransitionSummary"]


class NoMigrationPath(InvalidParameter):
    code = "no-migration-path"


@dataclass(frozen=True)
class InstanceAdminView:
    """Everything about an instance, the private context too (``instances.admin``)."""

    state: Any
    context: Any
    status: str
    tags: list[str]
    done: bool
    version: VersionInfo | None
    desired_version: VersionInfo | None
    created_ms: int


class InstanceAdmin:
    def __init__(self, store: Store, instances: InstanceService) -> None:
        self._store = store
        self._machines = store.machines
        self._admin = store.instance_admin
        self._instances = instances

    async def _instance(self, org_id: str, machine_slug: str, name: str) -> InstanceRow:
        """The instance; 404 for a missing machine or instance, before any authorizer runs."""
        machine = await self._machines.machine(org_id, machine_slug)
        row = await self._store.find_instance(machine.id, name)
        if row is None:
            raise NotFound(f"instance {name!r} not found")
        return row

    async def create(
        self,
        org_id: str,
        machine_slug: str,
        name: str,
        *,
        context: Mapping[str, Any],
        auth_context: Mapping[str, Any],
        version_id: str | None,
    ) -> InstanceState:
        """A new instance, of the machine's current version or of ``version_id`` (one of its versions)."""
        if version_id is not None:
            machine = await self._machines.machine(org_id, machine_slug)
            version = await self._machines.get_version(version_id)
            if version.machine_id != machine.id:
                raise NotFound(f"machine version {version_id!r} not found")
        return await self._instances.create(
            org_id, machine_slug, name, context=context, auth_context=auth_context, version_id=version_id
        )

    async def instances(self, org_id: str, machine_slug: str, cursor: str | None) -> Page[InstanceSummary]:
        machine = await self._machines.machine(org_id, machine_slug)
        return await self._admin.instances_page(machine.id, cursor)

    async def transitions(
        self, org_id: str, machine_slug: str, name: str, cursor: str | None
    ) -> Page[TransitionSummary]:
        row = await self._instance(org_id, machine_slug, name)
        return await self._admin.transitions_page(row.id, cursor)

    async def view(self, org_id: str, machine_slug: str, name: str) -> InstanceAdminView:
        row = await self._instance(org_id, machine_slug, name)
        return InstanceAdminView(
            row.state,
            row.context,
            row.status,
            row.tags,
            row.done,
            await self._machines.version_info(row.version_id),
            await self._machines.version_info(row.desired_version_id),
            row.created_ms,
        )

    async def set_desired_version(self, org_id: str, machine_slug: str, name: str, target: str) -> None:
        """The version the instance moves to before its next event (wire-api 7.8); its own version
        clears it. NoMigrationPath unless a chain of migrations leads there."""
        row = await self._instance(org_id, machine_slug, name)
        version = await self._machines.get_version(target)
        if version.machine_id != row.machine_id:
            raise NotFound(f"machine version {target!r} not found")
        if target == row.version_id:
            await self._admin.set_desired_version(row.id, None)
            return
        if (
            migration_chain(await self._store.migrations.migration_edges(row.machine_id), row.version_id, target)
            is None
        ):
            raise NoMigrationPath(f"no chain of migrations leads from {row.version_id} to {target}")
        await self._admin.set_desired_version(row.id, target)

    async def set_status(self, org_id: str, machine_slug: str, name: str, status: Literal["running", "paused"]) -> None:
        row = await self._instance(org_id, machine_slug, name)
        await self._admin.set_status(row.id, status)

    async def delete(self, org_id: str, machine_slug: str, name: str, confirm: Confirmation) -> None:
        """404 for no such instance, then 400 unless confirmed."""
        row = await self._instance(org_id, machine_slug, name)
        confirm.check(machine_slug, name)
        await self._admin.delete_instance(row.id)

    async def subscriber_state(
        self, org_id: str, machine_id: int, machine_slug: str, name: str, auth_context: Mapping[str, Any]
    ) -> InstanceState:
        """The committed state a new subscriber starts from; 404 for no such instance, Rejected
        when the machine's allowRead refuses it."""
        row = await self._store.find_instance(machine_id, name)
        if row is None:
            raise NotFound(f"instance {name!r} not found")
        if not await self._instances.may_read(
            row.version_id, org_id, machine_slug, name, row.state, row.context, auth_context
        ):
            raise Rejected("the machine's authorizer rejected the subscription")
        return InstanceState.of(row)
