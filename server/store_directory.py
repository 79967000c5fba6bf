"""The directory half of the storage layer: what its repositories share.

The directory (orgs, users, keys, providers, machines, versions, migrations, the instances' admin
views) is split into repositories by concern, each its own module holding its SQL (written once
for both databases, server/db.py) and returning typed rows:

- ``server/store_orgs.py``          users, orgs, members, invitations, keys, server secrets
- ``server/store_providers.py``     identity and token providers
- ``server/store_machines.py``      machines, versions, index selectors and the index query
- ``server/store_migrations.py``    migrations between versions
- ``server/store_instance_admin.py`` the instances' directory views: lists, history, status, delete

``Store`` (server/store.py) builds one of each over its database and holds them as attributes
(``store.orgs``, ``store.machines``, ...). This module holds what they share: the ``Repository``
base (reads, writes, keyset pages), the JSON encoder, the cursors, and ``Authority``, the caches of
authority this process keeps (verified key tokens, machine ids) and their revocation.

Lists use keyset pagination on ``(created_ms, id)``; a cursor is the base64url of the last row's
key, so pages stay stable while rows are inserted (wire-api 1.6).
"""

from __future__ import annotations

import base64
import collections
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .db import Database, Row, Tx
from .errors import InvalidParameter
from .jsoncodec import dumps as _dumps

__all__ = ["AUTHORITY_CHANNEL", "Authority", "Page", "Repository"]

PAGE_SIZE = 100
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Page(Generic[R]):
    """One page of a list (wire-api 1.6): its items, and the cursor of the next page (None on the last)."""

    rows: list[R]
    cursor: str | None


def encode_cursor(created_ms: int, key: str | int) -> str:
    return base64.urlsafe_b64encode(_dumps([created_ms, key]).encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str | None) -> tuple[int, Any] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_ms, key = json.loads(raw)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidParameter("the cursor is not one this server issued", parameter="cursor") from exc
    # Only what this server issues: an int64 creation time and a string or integer key.
    if (
        not isinstance(created_ms, int)
        or isinstance(created_ms, bool)
        or not -(2**63) <= created_ms < 2**63
        or not isinstance(key, str | int)
        or isinstance(key, bool)
        or (isinstance(key, int) and not -(2**63) <= key < 2**63)
    ):
        raise InvalidParameter("the cursor is not one this server issued", parameter="cursor")
    return created_ms, key


AUTHORITY_CHANNEL = "statehost_authority"
"""PostgreSQL: the NOTIFY channel on which a deletion of authority reaches every node (server/revocation.py)."""


class Authority:
    """What this process caches of authority, and its revocation (docs/threat-model.md, "Revocation")."""

    def __init__(self, shared: bool, on_forget: Sequence[Callable[[str], None]] = ()) -> None:
        self.shared = shared
        self.verified_key_tokens: collections.OrderedDict[str, Any] = collections.OrderedDict()
        """Key-signed tokens this process has verified (server/auth.py): token -> (key, claims, until
        when it is trusted, ``time.monotonic``, the Caller). Keys are immutable, so a verified token stays valid
        until its exp, or until its key is deleted: then ``forget`` drops it, on every node."""
        self.machine_ids: dict[tuple[str, str], tuple[int, float]] = {}
        """(org id, slug) -> (machine id, until when it is trusted): MachineRepository.machine_id."""
        self.generation = 0
        """Bumped by every ``forget``: a reader that fetched authority from the database caches it only
        if no ``forget`` ran meanwhile (else a read overtaken by a delete would cache the deleted key)."""
        self.on_forget: list[Callable[[str], None]] = list(on_forget)
        """Told of every ``forget`` after the caches are dropped (the store's remembered index entries;
        the real-time sockets' callers, which come and go with the revocation listener)."""

    def forget(self, notice: str) -> None:
        """Drop what this process cached of the authority ``notice`` revokes: ``key:<key id>``,
        ``machine:<machine id>``, or ``*`` (everything: notices may have been missed)."""
        self.generation += 1
        kind, _, ident = notice.partition(":")
        if kind == "*":
            self.verified_key_tokens.clear()
            self.machine_ids.clear()
        elif kind == "key":
            for token in [t for t, hit in self.verified_key_tokens.items() if hit[0].id == ident]:
                del self.verified_key_tokens[token]
        elif kind == "machine":
            for name in [n for n, (mid, _) in self.machine_ids.items() if str(mid) == ident]:
                del self.machine_ids[name]
        for hook in self.on_forget:
            hook(notice)

    async def announce(self, tx: Tx, notice: str) -> None:
        """Several nodes: tell every node's ``forget`` of ``notice`` when (and only if) ``tx`` commits
        (PostgreSQL delivers a NOTIFY sent in a transaction at its commit)."""
        if self.shared:
            await tx.execute("SELECT pg_notify(?, ?)", (AUTHORITY_CHANNEL, notice))


class Repository:
    """A repository of the directory: reads and writes through the store's database."""

    def __init__(self, db: Database, authority: Authority) -> None:
        self.db = db
        self.authority = authority

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``fn`` inside a write transaction; return once it is durably committed."""
        return await self.db.write(fn)

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self.db.read(sql, params)

    async def _read_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.db.read(sql, params)
        return rows[0] if rows else None

    async def _page(
        self, sql: str, params: Sequence[Any], cursor: str | None, key_column: str, row: Callable[[Row], R]
    ) -> Page[R]:
        """``sql`` selects rows with ``created_ms`` and ``key_column``; it must end with a WHERE
        clause. ``row`` makes each database row a typed one."""
        after = decode_cursor(cursor)
        extra, extra_params = "", []
        if after is not None:
            extra = f" AND (created_ms, {key_column}) > (?, ?)"
            extra_params = [after[0], after[1]]
        rows = await self._read(
            f"SELECT * FROM ({sql}) AS page WHERE 1 = 1{extra} ORDER BY created_ms, {key_column} LIMIT ?",
            [*params, *extra_params, PAGE_SIZE + 1],
        )
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        next_cursor = encode_cursor(rows[-1]["created_ms"], rows[-1][key_column]) if more and rows else None
        return Page([row(r) for r in rows], next_cursor)
