"""Instance indexes (wire-api 3.5, 3.6, 3.10): what each committed round writes to ``index_entries``.

A machine declares index names; each of its versions maps some of them to a JSONPath selector
(the subset of server/jsonpath.py) into the instance's **full** context (index values bypass the
``public`` rule: anyone with ``indexes.read`` sees them). After every round with transitions the
instance service asks :meth:`Indexes.values` for the instance's entries and the store replaces the
instance's entries with them in the round's own transaction.

What a selector's match becomes (statehost choices where the docs only speak of strings and arrays
of strings):

- a string: one entry;
- an array: one entry per string element (other elements are skipped; duplicates count once);
- anything else -- a number, a boolean, ``null``, an object, or no match at all: no entry;
- strings longer than :data:`MAX_VALUE_CHARS` characters are skipped (never truncated, so that an
  ``eq`` query can never match a value the instance does not have).

A version's selectors never change once it is finalized, so they are cached per version.
Finalizing a version inherits, for every index the request does not name, the selector of the
machine's current version (:func:`inherit_selectors`, smply docs via wire-api 3.6).

Wiring (server/app.py): ``attach(engine)`` right after ``await engine.start()`` and
``server.routes.indexes.routes`` among the route tables.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from . import jsonpath
from .errors import InvalidParameter

if TYPE_CHECKING:
    from .engine import DurableEngine

__all__ = ["MAX_VALUE_CHARS", "Indexes", "attach", "check_selectors", "entries_of", "inherit_selectors"]

log = logging.getLogger("statehost.indexes")

MAX_VALUE_CHARS = 1000
"""Longer strings are not indexed."""
CACHED_VERSIONS = 4096


class SelectorSource(Protocol):
    async def version_selectors(self, version_id: str | None) -> dict[str, str]: ...


def entries_of(found: Any) -> list[str]:
    """The index entries for one selector's match (see the module docstring)."""
    if isinstance(found, str):
        candidates: Iterable[Any] = (found,)
    elif isinstance(found, list):
        candidates = found
    else:
        return []
    out: list[str] = []
    for item in candidates:
        if isinstance(item, str) and len(item) <= MAX_VALUE_CHARS and item not in out:
            out.append(item)
    return out


class Indexes:
    """Computes an instance's index entries from its context (InstanceService.index_values)."""

    def __init__(self, store: SelectorSource) -> None:
        self.store = store
        self._compiled: collections.OrderedDict[str, tuple[tuple[str, tuple[jsonpath.Step, ...]], ...]] = (
            collections.OrderedDict()
        )

    async def _selectors(self, version_id: str) -> tuple[tuple[str, tuple[jsonpath.Step, ...]], ...]:
        compiled = self._compiled.get(version_id)
        if compiled is not None:
            self._compiled.move_to_end(version_id)
            return compiled
        steps = []
        for name, path in sorted((await self.store.version_selectors(version_id)).items()):
            try:
                steps.append((name, jsonpath.parse(path)))
            except ValueError as exc:  # finalize refuses these; a version stored before that check
                log.warning("version %s: invalid selector %r for index %r (%s)", version_id, path, name, exc)
        compiled = tuple(steps)
        self._compiled[version_id] = compiled
        while len(self._compiled) > CACHED_VERSIONS:
            self._compiled.popitem(last=False)
        return compiled

    async def values(self, version_id: str, context: Any) -> dict[str, list[str]]:
        """The entries (index name -> values) of an instance of ``version_id`` whose context is ``context``.

        Indexes whose selector matches nothing indexable are left out (the instance then has no
        entry in them).
        """
        out: dict[str, list[str]] = {}
        for name, steps in await self._selectors(version_id):
            found = entries_of(jsonpath.select(context, steps))
            if found:
                out[name] = found
        return out


def check_selectors(selectors: Mapping[str, str]) -> None:
    """InvalidParameter (``indexSelectors``) unless every selector is a JSONPath of the supported subset."""
    for name, path in selectors.items():
        try:
            jsonpath.parse(path)
        except ValueError as exc:
            raise InvalidParameter(
                f"indexSelectors.{name}: {path!r} is not a supported JSONPath: {exc}", parameter="indexSelectors"
            ) from None


def inherit_selectors(given: Mapping[str, str], current: Mapping[str, str], indexes: Iterable[str]) -> dict[str, str]:
    """The selectors a new version stores: ``given``, plus the current version's selector of every
    index of the machine that ``given`` does not name (wire-api 3.6)."""
    declared = set(indexes)
    merged = {name: path for name, path in current.items() if name in declared}
    merged.update(given)
    return merged


def attach(engine: DurableEngine) -> Indexes:
    """Make the engine's instance service index every committed round; idempotent.

    Call it right after ``await engine.start()`` with no ``await`` in between: the timer loop starts
    there and a round committed before the hook is set would leave the instance's entries stale.
    """
    hook = engine.instances.index_values
    owner = getattr(hook, "__self__", None)
    if isinstance(owner, Indexes):
        return owner
    indexes = Indexes(engine.store.machines)
    engine.instances.index_values = indexes.values
    return indexes
