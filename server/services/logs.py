"""The log lines of ``GET /logs`` (wire-api section 5)."""

from __future__ import annotations

from dataclasses import dataclass

from ..store import Store

__all__ = ["LogEntry", "LogService"]


@dataclass(frozen=True)
class LogEntry:
    ts_ms: int
    org_id: str
    machine_slug: str
    instance_name: str | None
    version_id: str | None
    stream: str
    text: str


class LogService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def after(
        self,
        org_id: str,
        after_ms: int,
        *,
        to_ms: int | None,
        machine_slug: str | None,
        instance_name: str | None,
        version_id: str | None,
    ) -> list[LogEntry]:
        """Lines strictly after ``after_ms`` (a page never splits a millisecond: Store.logs_after)."""
        rows = await self._store.logs_after(
            org_id,
            after_ms,
            to_ms=to_ms,
            machine_slug=machine_slug,
            instance_name=instance_name,
            version_id=version_id,
        )
        return [
            LogEntry(
                r["ts_ms"], r["org_id"], r["machine_slug"], r["instance_name"], r["version_id"], r["stream"], r["text"]
            )
            for r in rows
        ]
