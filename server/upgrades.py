"""Version upgrades of running instances (wire-api 7.8): which migrations lead where.

A migration is an edge ``from version -> to version`` of one machine. An instance whose desired
version differs from its own is upgraded along the shortest chain of edges (fewest migrations;
among equal chains, the one using the newest migrations, so that a fixed migration uploaded
between the same versions replaces a broken one), on its next event. The work itself
(describe, migrate, rebuild) runs in the sandbox: :class:`Upgrader`, called by the window runner
(server/windows.py) before the event's own window.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence

from runtime import Clock, Executor, LogLine, Round, StepRequest, Transport, run_window

from .errors import NotFound
from .machine_cache import MachineCache
from .mailbox import Request
from .rounds import InstanceLogs, RoundCommitter, Window
from .snapshot import InstanceSnapshot
from .store import InstanceRow, Store

__all__ = ["Upgrader", "migration_chain"]

log = logging.getLogger("statehost.instances")


def migration_chain(edges: Sequence[tuple[str, str, str]], source: str, target: str) -> list[str] | None:
    """The migration ids leading from ``source`` to ``target`` (``[]`` when they are equal), or
    None when no chain exists. ``edges`` are (from, to, migration id), preferred first."""
    if source == target:
        return []
    graph: dict[str, list[tuple[str, str]]] = {}
    for start, end, migration_id in edges:
        graph.setdefault(start, []).append((end, migration_id))
    previous: dict[str, tuple[str, str]] = {}
    queue = deque([source])
    seen = {source}
    while queue:
        version = queue.popleft()
        for nxt, migration_id in graph.get(version, []):
            if nxt in seen:
                continue
            seen.add(nxt)
            previous[nxt] = (version, migration_id)
            if nxt == target:
                chain: list[str] = []
                at = target
                while at != source:
                    at, used = previous[at]
                    chain.append(used)
                return chain[::-1]
            queue.append(nxt)
    return None


class Upgrader:
    """Moves a settled instance to its desired version, as a ``statebacked.upgrade`` transition."""

    def __init__(
        self,
        store: Store,
        machines: MachineCache,
        committer: RoundCommitter,
        logs: InstanceLogs,
        executor: Executor,
        transport: Transport,
        clock: Clock,
    ) -> None:
        self.store = store
        self.machines = machines
        self.committer = committer
        self.logs = logs
        self.executor = executor
        self.transport = transport
        self.clock = clock

    async def upgrade(self, request: Request, row: InstanceRow) -> InstanceRow:
        """Move a settled instance to its desired version (wire-api 7.8): describe it as state
        paths, map them through each migration of the chain, rebuild it in the new version and
        commit that as a ``statebacked.upgrade`` transition. Returns the row the event then goes to:
        upgraded, or unchanged when the upgrade failed (logged; the desired version is cleared, so
        setting it again retries)."""
        target = row.desired_version_id
        assert target is not None
        source = row.version_id
        logs: list[LogLine] = []

        async def give_up(reason: str) -> InstanceRow:
            text = f"upgrade from {source} to {target} failed, the instance stays on {source}: {reason}"
            log.info("instance %s: %s", row.name, text)
            logs.append(LogLine("stderr", "error", text, self.clock.now_ms()))
            await self.logs.store_lines(request.org_id, request.machine_slug, row.name, source, tuple(logs))
            await self.store.set_desired_version(row.id, None)
            return row

        chain = migration_chain(await self.store.migration_edges(row.machine_id), source, target)
        if chain is None:
            return await give_up("no chain of migrations leads there")
        described = await self.executor.run(
            (await self.machines.prepared(source)).describe, row.persisted, self.clock.now_ms()
        )
        logs += described.logs
        if not described.ok or described.description is None:
            return await give_up(f"the instance could not be read as state paths: {described.error}")
        description = described.description
        for migration_id in chain:
            migrated = await self.executor.run(
                (await self.machines.prepared_migration(migration_id)).upgrade, description, self.clock.now_ms()
            )
            logs += migrated.logs
            if not migrated.ok or migrated.description is None:
                return await give_up(f"migration {migration_id} failed: {migrated.error}")
            description = migrated.description
        cut_off = row.persisted.get("inflight") or []
        if cut_off:
            logs.append(
                LogLine(
                    "stderr",
                    "warn",
                    f"services {', '.join(cut_off)} were cut off before the upgrade; their error events "
                    "are not delivered to the new version",
                    self.clock.now_ms(),
                )
            )
        event = {
            "type": "statebacked.upgrade",
            "fromMachineVersionId": source,
            "toMachineVersionId": target,
            "migrationPath": chain,
        }
        step = StepRequest("upgrade", row.name, None, event=event, description=description, parent=row.parent)
        window = Window(
            request, row.id, row.seq, row.ts, target, InstanceSnapshot.of(row), parent=row.parent, lease=request.lease
        )

        async def commit(round_: Round, tag: object) -> None:
            await self.committer.commit(window, round_, tag)

        result = await run_window(
            await self.machines.prepared(target),
            step,
            executor=self.executor.lane(request.org_id),
            commit=commit,
            transport=self.transport,
            clock=self.clock,
        )
        if not result.ok:
            logs += result.uncommitted_logs
            return await give_up(f"the new version does not accept the migrated instance: {result.error}")
        await self.logs.store_lines(request.org_id, request.machine_slug, row.name, target, tuple(logs))
        upgraded = await self.store.find_instance(request.machine_id, request.instance_name)
        if upgraded is None:
            raise NotFound(f"instance {request.instance_name!r} not found")
        return upgraded
