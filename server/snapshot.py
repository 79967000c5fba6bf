"""An instance's committed state: the one frozen value HTTP, /rt and the cluster relay hand on.

Built from a row (``of``: a read), from a committed transition (``committed``: a round of a window, or
a transition another node committed) and turned into the wire's ``State`` object (``wire``) or the
real-time ``instance-update`` message (``update_message``) in one place each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["InstanceSnapshot", "SnapshotRow"]


class SnapshotRow(Protocol):
    """What a snapshot is read from (``server.store.InstanceRow``)."""

    @property
    def id(self) -> int: ...
    @property
    def machine_id(self) -> int: ...
    @property
    def org_id(self) -> str: ...
    @property
    def machine_slug(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def version_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def ts(self) -> int: ...
    @property
    def state(self) -> Any: ...
    @property
    def context(self) -> Any: ...
    @property
    def public_context(self) -> Mapping[str, Any]: ...
    @property
    def tags(self) -> Any: ...
    @property
    def done(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class InstanceSnapshot:
    """One committed state of one instance: the wire contract's ``State`` (``ts``, ``state``,
    ``publicContext``, ``tags``, ``done``), the full ``context`` (for allowRead and the admin view)
    and whose state it is (org, machine, instance, version, ``seq``: what subscribers and the
    cluster relay need)."""

    ts: int
    state: Any
    public_context: Mapping[str, Any]
    tags: tuple[str, ...]
    done: bool
    context: Any = None
    org_id: str = ""
    machine_id: int = 0
    machine_slug: str = ""
    instance_name: str = ""
    version_id: str = ""
    instance_id: int = 0
    seq: int = 0

    @staticmethod
    def of(row: SnapshotRow) -> InstanceSnapshot:
        """The state a row holds (its last commit)."""
        return InstanceSnapshot(
            row.ts,
            row.state,
            row.public_context,
            tuple(row.tags),
            row.done,
            row.context,
            row.org_id,
            row.machine_id,
            row.machine_slug,
            row.name,
            row.version_id,
            row.id,
            row.seq,
        )

    @staticmethod
    def committed(
        *,
        org_id: str,
        machine_id: int,
        machine_slug: str,
        instance_name: str,
        version_id: str,
        instance_id: int,
        seq: int,
        ts: int,
        state: Any,
        public_context: Mapping[str, Any],
        tags: Any,
        done: bool,
        context: Any,
    ) -> InstanceSnapshot:
        """One committed transition (of a round this node committed, or read back from the history)."""
        return InstanceSnapshot(
            ts,
            state,
            public_context,
            tuple(tags),
            done,
            context,
            org_id,
            machine_id,
            machine_slug,
            instance_name,
            version_id,
            instance_id,
            seq,
        )

    def wire(self) -> dict[str, Any]:
        """The ``State`` object of the wire contract (wire-api 3.7)."""
        return {
            "ts": self.ts,
            "state": self.state,
            "publicContext": dict(self.public_context),
            "tags": list(self.tags),
            "done": self.done,
        }

    def update_message(self, machine_slug: str | None = None, instance_name: str | None = None) -> str:
        """The real-time ``instance-update`` message (wire-api 4.2), serialised."""
        return json.dumps(
            {
                "type": "instance-update",
                "machineName": self.machine_slug if machine_slug is None else machine_slug,
                "machineInstanceName": self.instance_name if instance_name is None else instance_name,
                **self.wire(),
            },
            separators=(",", ":"),
        )
