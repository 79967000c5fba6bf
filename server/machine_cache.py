"""Prepared machine versions and migrations, kept per node: bundle and load an upload once, prepare
a stored version on its first use (or at the start's warm-up), and remember each version's structure.

A version never changes, so neither does anything cached for it; the caches are bounded (least
recently used evicted) and a version being prepared is prepared once however many requests wait.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from runtime import Bundler, Clock, Engine, Executor, Limits, MachineBundle, PreparedMachine, PreparedMigration, Upload

from .errors import MachineError, NotFound
from .store import Store

__all__ = ["PREPARED_CACHE_SIZE", "MachineCache"]

log = logging.getLogger("statehost.instances")

PREPARED_CACHE_SIZE = 256


class MachineCache:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        bundler: Bundler,
        executor: Executor,
        clock: Clock,
        limits: Limits,
        on_evicted: Callable[[str], None] = lambda version_id: None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.bundler = bundler
        self.executor = executor
        self.clock = clock
        self.limits = limits
        self.on_evicted = on_evicted
        """Told of a version whose prepared machine left the cache (its live actors go with it)."""
        self._prepared: collections.OrderedDict[str, PreparedMachine] = collections.OrderedDict()
        self._migrations: collections.OrderedDict[str, PreparedMigration] = collections.OrderedDict()
        self._preparing: dict[str, asyncio.Lock] = {}
        self._structures: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        """version id -> its structure (versions never change, so neither does their shape)."""
        self.prepare_counts: dict[str, float] = {"warmed": 0, "on_demand": 0, "warm_up_s": 0.0}
        """Since start: stored versions prepared by the start's warm-up, and by a request that found
        its version unprepared (an upload's own prepare counts in neither); the warm-up's seconds."""

    def versions(self) -> list[str]:
        """The versions prepared now, least recently used first."""
        return list(self._prepared)

    # -- uploads ------------------------------------------------------------------------------------------

    async def prepare_upload(self, upload: Upload) -> tuple[MachineBundle, PreparedMachine]:
        """Bundle an upload and load it once in the sandbox (off the event loop).

        Raises runtime.BundleError / InvalidMachineError for an upload that cannot be a version.
        """
        bundle = await self.executor.run(self.bundler.bundle, upload)
        prepared = await self.executor.run(self.engine.prepare, bundle, self.limits)
        return bundle, prepared

    async def prepare_migration_upload(self, upload: Upload) -> tuple[MachineBundle, PreparedMigration]:
        """Bundle a migration and check its exports in the sandbox (off the event loop).

        Raises runtime.BundleError / InvalidMachineError for an upload that cannot be a migration.
        """
        bundle = await self.executor.run(functools.partial(self.bundler.bundle, upload, machine=False))
        prepared = await self.executor.run(self.engine.prepare_migration, bundle, self.limits)
        return bundle, prepared

    def remember(self, version_id: str, prepared: PreparedMachine) -> None:
        """Keep a machine prepared at upload for the version's first instances."""
        self._cache(self._prepared, version_id, prepared, evicted=self.on_evicted)

    def remember_migration(self, migration_id: str, prepared: PreparedMigration) -> None:
        self._cache(self._migrations, migration_id, prepared)

    # -- stored versions ----------------------------------------------------------------------------------

    async def warm_up(self, max_versions: int, budget_s: float) -> dict[str, Any]:
        """Prepare the current versions of machines that have instances (``Store.versions_to_warm``)
        before the node reports ready, so that the first events after a restart find them prepared.
        Bounded: at most ``max_versions``, and no new one starts after ``budget_s`` seconds. On the
        WASM engine each is a persisted image read from disk (milliseconds); otherwise (native
        engine, or an image not on disk) the bundle is evaluated. Returns what it did."""
        started = time.monotonic()
        versions = await self.store.versions_to_warm(max_versions)
        warmed = 0
        for version_id in versions:
            if time.monotonic() - started > budget_s:
                break
            try:
                await self.prepared(version_id, warming=True)
            except Exception as exc:  # a version that fails to load fails its own events, not the start
                log.warning("warm-up: version %s did not prepare: %s", version_id, exc)
                continue
            warmed += 1
        self.prepare_counts["warm_up_s"] = round(time.monotonic() - started, 3)
        return {"candidates": len(versions), "warmed": warmed, "seconds": self.prepare_counts["warm_up_s"]}

    async def prepared(self, version_id: str, *, warming: bool = False) -> PreparedMachine:
        """The version's prepared machine (prepared now if it is not cached)."""
        cached = self._prepared.get(version_id)
        if cached is not None:
            self._prepared.move_to_end(version_id)
            return cached
        lock = self._preparing.setdefault(version_id, asyncio.Lock())
        async with lock:
            cached = self._prepared.get(version_id)
            if cached is not None:
                return cached
            row = await self.store.get_version(version_id)
            assert row.bundle is not None and row.bundle_hash is not None
            bundle = MachineBundle(row.bundle, None if row.self_contained else row.xstate_major, row.bundle_hash)
            prepared = await self.executor.run(self.engine.prepare, bundle, self.limits)
            self.prepare_counts["warmed" if warming else "on_demand"] += 1
            self.remember(version_id, prepared)
            return prepared

    async def prepared_migration(self, migration_id: str) -> PreparedMigration:
        cached = self._migrations.get(migration_id)
        if cached is None:
            row = await self.store.migration(migration_id)
            if row is None or row["bundle"] is None:
                raise NotFound(f"migration {migration_id!r} not found")
            bundle = MachineBundle(row["bundle"], None, row["bundle_hash"])
            cached = await self.executor.run(self.engine.prepare_migration, bundle, self.limits)
        self._cache(self._migrations, migration_id, cached)
        return cached

    async def structure(self, version_id: str) -> dict[str, Any]:
        """The version's shape for drawing it (``PreparedMachine.structure``), cached per version.

        Raises MachineError when the machine cannot be walked (a fault or a limit in the sandbox).
        """
        cached = self._structures.get(version_id)
        if cached is not None:
            self._structures.move_to_end(version_id)
            return cached
        prepared = await self.prepared(version_id)
        result = await self.executor.run(prepared.structure, self.clock.now_ms())
        if not result.ok or not isinstance(result.structure, dict):
            raise MachineError(f"the machine's structure could not be read: {result.error}")
        self._cache(self._structures, version_id, result.structure)
        return result.structure

    @staticmethod
    def _cache(
        cache: collections.OrderedDict[str, Any],
        key: str,
        value: Any,
        evicted: Callable[[str], None] | None = None,
    ) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > PREPARED_CACHE_SIZE:
            old, _ = cache.popitem(last=False)
            if evicted is not None:
                evicted(old)
