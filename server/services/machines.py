"""Machines, versions, migrations, code uploads and the index query (wire-api 3.5-3.7, 3.10).

A version and a migration are made in three steps: a provisional object (its signed id and an
upload token), the upload of its code, and the finalization, which bundles the code and loads it
once in the sandbox before anything is stored (a version that cannot run is never final).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from runtime import BundleError, Clock, InvalidMachineError, Upload

from ..errors import Conflict, InvalidParameter, NotFound
from ..indexes import check_selectors, inherit_selectors
from ..instances import InstanceService
from ..store import Store
from ..store_directory import Page
from ..store_machines import INDEX_OPERATORS, MachineRow, MachineSummary, VersionInfo
from ..uploads import sign_id, unsign_id, upload_token, verify_upload_token

__all__ = [
    "INDEX_OPERATORS",
    "Confirmation",
    "MachineDetail",
    "MachineService",
    "MachineSummary",
    "Provisional",
    "VersionInfo",
    "confirmation",
    "upload_error",
]


@dataclass(frozen=True)
class MachineDetail:
    machine: MachineRow
    current_version: VersionInfo | None


@dataclass(frozen=True)
class Provisional:
    """Step 1's answer for a version or a migration."""

    object_id: str
    signed_id: str
    """The id the client names it by in step 3 (signed: nobody else can finalize it)."""
    upload_token: str
    """The path segment of its upload URL (signed, expiring)."""


@dataclass(frozen=True)
class Confirmation:
    """What a request to delete data forever says to confirm it (wire-api 3.5, 3.9)."""

    danger: Any
    """``dangerDataWillBeDeletedForever``: must be true."""
    field: str
    """The name of the HMAC field."""
    given: Any
    """Its value: base64url HMAC-SHA256 of the object's name, keyed with the machine's name."""

    def check(self, key: str, data: str) -> None:
        if self.danger is not True:
            raise InvalidParameter(
                "set dangerDataWillBeDeletedForever to true", parameter="dangerDataWillBeDeletedForever"
            )
        expected = confirmation(key, data)
        if not isinstance(self.given, str) or not hmac.compare_digest(self.given.encode(), expected.encode()):
            raise InvalidParameter(f"{self.field} does not match", parameter=self.field)


def confirmation(key: str, data: str) -> str:
    """HMAC-SHA256(key, data), base64url without padding: the delete confirmations (wire-api 3.5, 3.9)."""
    digest = hmac.new(key.encode(), data.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def upload_error(exc: BundleError | InvalidMachineError) -> InvalidParameter:
    """The 400 for an upload that cannot be a version or migration. statehost extension: a bundling
    failure also carries ``reason`` (BundleError's stable code) and ``diagnostics`` (each with
    ``message`` and, where esbuild located it, ``file``, 1-based ``line`` and ``column``, and
    ``lineText``), so an editor can mark the line. Official clients read only ``error``."""
    if not isinstance(exc, BundleError):
        return InvalidParameter(str(exc), parameter="code")
    diagnostics = []
    for d in exc.diagnostics:
        item: dict[str, Any] = {"message": d.message}
        for key, value in (("file", d.file), ("line", d.line), ("column", d.column), ("lineText", d.line_text)):
            if value is not None:
                item[key] = value
        diagnostics.append(item)
    return InvalidParameter(str(exc), parameter="code", reason=exc.code, diagnostics=diagnostics)


def _js_name(filename: str | None) -> str:
    """Uploads are pre-built ES modules ("<machine>.js"); keep a safe name for diagnostics."""
    base = (filename or "machine.js").rsplit("/", 1)[-1]
    return base if base.endswith((".js", ".mjs", ".ts")) else base + ".js"


class MachineService:
    def __init__(self, store: Store, instances: InstanceService, clock: Clock, upload_secret: str) -> None:
        self._machines = store.machines
        self._migrations = store.migrations
        self._instances = instances
        self._clock = clock
        self._secret = upload_secret

    # -- machines -------------------------------------------------------------------------------------

    async def machines(self, org_id: str, cursor: str | None) -> Page[MachineSummary]:
        return await self._machines.machines_page(org_id, cursor)

    async def create_machine(self, org_id: str, slug: str, indexes: list[str]) -> None:
        await self._machines.create_machine(org_id, slug, indexes, self._clock.now_ms())

    async def machine(self, org_id: str, slug: str) -> MachineRow:
        """NotFound for a machine the org does not have."""
        return await self._machines.machine(org_id, slug)

    async def detail(self, org_id: str, slug: str) -> MachineDetail:
        machine = await self._machines.machine(org_id, slug)
        return MachineDetail(machine, await self._machines.version_info(machine.current_version_id))

    async def delete_machine(self, org_id: str, slug: str, confirm: Confirmation) -> None:
        """404 for no such machine, then 400 unless confirmed, then 409 while it has instances."""
        machine = await self._machines.machine(org_id, slug)
        confirm.check(slug, slug)
        await self._machines.delete_machine(machine.id)

    # -- versions -------------------------------------------------------------------------------------

    async def versions(self, org_id: str, slug: str, cursor: str | None) -> Page[VersionInfo]:
        machine = await self._machines.machine(org_id, slug)
        return await self._machines.versions_page(machine.id, cursor)

    async def structure(self, org_id: str, slug: str, version_id: str) -> dict[str, Any]:
        """The version's states, nesting, transitions, guards' names, delays and invokes."""
        machine = await self._machines.machine(org_id, slug)
        version = await self._machines.get_version(version_id)
        if version.machine_id != machine.id:
            raise NotFound(f"machine version {version_id!r} not found")
        return await self._instances.structure(version_id)

    def _provisional(self, kind: str, object_id: str) -> Provisional:
        token = upload_token(self._secret, kind, object_id, self._clock.now_ms() // 1000)
        return Provisional(object_id, sign_id(self._secret, kind, object_id), token)

    async def provisional_version(self, org_id: str, slug: str) -> Provisional:
        machine = await self._machines.machine(org_id, slug)
        version_id = await self._machines.create_provisional_version(machine.id, self._clock.now_ms())
        return self._provisional("version", version_id)

    def upload_target(self, token: str) -> tuple[str, str]:
        """(kind, id) of the provisional object an upload token names; 4xx for a bad or expired one."""
        return verify_upload_token(self._secret, token, self._clock.now_ms() // 1000)

    async def attach_upload(self, kind: str, object_id: str, data: bytes, filename: str) -> None:
        """Step 2: the code of a provisional version or migration (once)."""
        if kind == "migration":
            await self._migrations.store_migration_upload(object_id, data, filename)
        else:
            await self._machines.store_upload(object_id, data, filename)

    async def finalize_version(
        self,
        org_id: str,
        slug: str,
        signed: str,
        *,
        client_info: Any,
        make_current: Any,
        selectors: Any,
        major: Any,
    ) -> str:
        """Step 3: bundle the uploaded code, load it once in the sandbox, store it as final. The
        fields are checked here, in this order (they come as the client sent them)."""
        machine = await self._machines.machine(org_id, slug)
        version_id = unsign_id(self._secret, "version", signed)
        row = await self._machines.provisional_version(version_id)
        if row is None or row.machine_id != machine.id:
            raise InvalidParameter("unknown machine version", parameter="machineVersionId")
        if row.final:
            raise Conflict("this version is already finalized")
        if row.source is None:
            raise InvalidParameter("no code was uploaded for this version yet", parameter="file")
        if not isinstance(client_info, str):
            raise InvalidParameter("clientInfo must be a string", parameter="clientInfo")
        if not isinstance(make_current, bool):
            raise InvalidParameter("makeCurrent must be a boolean", parameter="makeCurrent")
        if not isinstance(selectors, dict) or not all(isinstance(v, str) for v in selectors.values()):
            raise InvalidParameter(
                "indexSelectors must map index names to JSONPath strings", parameter="indexSelectors"
            )
        unknown = sorted(set(selectors) - set(machine.indexes))
        if unknown:
            raise InvalidParameter(f"{unknown[0]!r} is not an index of this machine", parameter="indexSelectors")
        check_selectors(selectors)
        if major is not None and major not in (4, 5):
            raise InvalidParameter("xstateMajor must be 4 or 5", parameter="xstateMajor")
        upload = Upload(_js_name(row.source_name), row.source, xstate_major=major)
        try:
            bundle, prepared = await self._instances.prepare_upload(upload)
        except (BundleError, InvalidMachineError) as exc:
            raise upload_error(exc) from None
        # omitted selectors inherit the current version's (read now: bundling may have taken a while)
        current = await self._machines.version_selectors(await self._machines.current_version_id(machine.id))
        await self._machines.finalize_version(
            version_id,
            bundle=bundle.code,
            bundle_hash=bundle.hash,
            xstate_major=prepared.major,
            self_contained=bundle.self_contained,
            client_info=client_info,
            index_selectors=inherit_selectors(selectors, current, machine.indexes),
            make_current=make_current,
        )
        self._instances.remember(version_id, prepared)
        return version_id

    # -- migrations -----------------------------------------------------------------------------------

    async def provisional_migration(self, org_id: str, slug: str, from_id: Any, to_id: Any) -> Provisional:
        """Step 1 of 3 (wire-api 3.7): a provisional migration between two versions of the machine."""
        machine = await self._machines.machine(org_id, slug)
        versions = []
        for field, value in (("fromMachineVersionId", from_id), ("toMachineVersionId", to_id)):
            if not isinstance(value, str):
                raise InvalidParameter(f"{field} must be a machine version id", parameter=field)
            try:
                version = await self._machines.get_version(value)
            except NotFound:
                version = None
            if version is None or version.machine_id != machine.id:
                raise InvalidParameter(f"{value!r} is not a version of machine {machine.slug!r}", parameter=field)
            versions.append(value)
        if versions[0] == versions[1]:
            raise InvalidParameter("a migration leads from one version to another", parameter="toMachineVersionId")
        migration_id = await self._migrations.create_provisional_migration(
            machine.id, versions[0], versions[1], self._clock.now_ms()
        )
        return self._provisional("migration", migration_id)

    async def finalize_migration(self, org_id: str, slug: str, signed: str) -> str:
        """Step 3 of 3: bundle the uploaded migration and check its exports in the sandbox."""
        machine = await self._machines.machine(org_id, slug)
        migration_id = unsign_id(self._secret, "migration", signed)
        row = await self._migrations.migration(migration_id)
        if row is None or row.machine_id != machine.id:
            raise InvalidParameter("unknown migration", parameter="machineVersionMigrationId")
        if row.final:
            raise Conflict("this migration is already finalized")
        if row.source is None:
            raise InvalidParameter("no code was uploaded for this migration yet", parameter="file")
        upload = Upload(_js_name(row.source_name), row.source)
        try:
            bundle, prepared = await self._instances.prepare_migration_upload(upload)
        except (BundleError, InvalidMachineError) as exc:
            raise upload_error(exc) from None
        await self._migrations.finalize_migration(migration_id, bundle=bundle.code, bundle_hash=bundle.hash)
        self._instances.remember_migration(migration_id, prepared)
        return migration_id

    # -- the index query (wire-api 3.10) --------------------------------------------------------------

    async def query_index(
        self,
        org_id: str,
        slug: str,
        index: str,
        op: str | None,
        value: str | None,
        descending: bool,
        limit: int,
        cursor: str | None,
    ) -> Page[tuple[str, str]]:
        """(index value, instance name) pairs; NotFound for a machine without that index."""
        machine = await self._machines.machine(org_id, slug)
        if index not in machine.indexes:
            raise NotFound(f"machine {machine.slug!r} has no index {index!r}")
        pairs, next_cursor = await self._machines.index_query(machine.id, index, op, value, descending, limit, cursor)
        return Page(pairs, next_cursor)
