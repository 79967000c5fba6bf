"""Version upgrades of running instances (wire-api 7.8): which migrations lead where.

A migration is an edge ``from version -> to version`` of one machine. An instance whose desired
version differs from its own is upgraded along the shortest chain of edges (fewest migrations;
among equal chains, the one using the newest migrations, so that a fixed migration uploaded
between the same versions replaces a broken one), on its next event. The work itself
(describe, migrate, rebuild) runs in the sandbox: server/instances.py ``InstanceService._upgrade``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

__all__ = ["migration_chain"]


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
