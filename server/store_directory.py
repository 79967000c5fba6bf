"""Storage of the directory: orgs, users, keys, machines, versions, identity and token providers.

Part of the storage layer (``Store`` inherits this mixin): every SQL statement of statehost lives in
``server/store.py`` and here. Lists use keyset pagination on ``(created_ms, id)``; a cursor is the
base64url of the last row's key, so pages stay stable while rows are inserted (wire-api 1.6).
"""

from __future__ import annotations

import base64
import collections
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .db import Row, Tx
from .errors import Conflict, InvalidParameter, NotFound
from .ids import new_id

__all__ = ["AUTHORITY_CHANNEL", "INDEX_OPERATORS", "DirectoryMixin", "MachineRow", "Page", "VersionInfo"]

PAGE_SIZE = 100
T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    cursor: str | None


@dataclass(frozen=True)
class VersionInfo:
    id: str
    created_ms: int
    client_info: str


@dataclass(frozen=True)
class MachineRow:
    id: int
    org_id: str
    slug: str
    indexes: list[str]
    current_version_id: str | None
    created_ms: int


def _dumps(value: Any) -> str:
    """JSON as the database stores it (compact, UTF-8): the one encoder of server/store*.py."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_cursor(created_ms: int, key: str | int) -> str:
    return base64.urlsafe_b64encode(_dumps([created_ms, key]).encode()).rstrip(b"=").decode()


INDEX_OPERATORS = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
"""The index query's ``op`` values and their SQL operators (wire-api 3.10)."""


def encode_index_cursor(value: str, name: str) -> str:
    return base64.urlsafe_b64encode(_dumps([value, name]).encode()).rstrip(b"=").decode()


def decode_index_cursor(cursor: str | None) -> tuple[str, str] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value, name = json.loads(raw)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidParameter("the cursor is not one this server issued", parameter="cursor") from exc
    if not isinstance(value, str) or not isinstance(name, str):
        raise InvalidParameter("the cursor is not one this server issued", parameter="cursor")
    return value, name


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


class DirectoryMixin:
    verified_key_tokens: collections.OrderedDict[str, Any]
    """Key-signed tokens this process has verified (server/auth.py): token -> (key, claims, until
    when it is trusted, ``time.monotonic``). Keys are immutable, so a verified token stays valid until
    its exp, or until its key is deleted: then ``forget`` drops it, on every node (docs/threat-model.md,
    "Revocation")."""
    _machine_ids: dict[tuple[str, str], tuple[int, float]]
    """(org id, slug) -> (machine id, until when it is trusted): Store.machine_id."""
    authority_generation: int
    """Bumped by every ``forget``: a reader that fetched authority from the database caches it only
    if no ``forget`` ran meanwhile (else a read overtaken by a delete would cache the deleted key)."""
    on_forget: list[Callable[[str], None]]
    """Told of every ``forget`` after the caches are dropped (the real-time sockets' callers)."""

    @property
    def shared(self) -> bool:
        raise NotImplementedError

    def forget(self, notice: str) -> None:
        """Drop what this process cached of the authority ``notice`` revokes: ``key:<key id>``,
        ``machine:<machine id>``, or ``*`` (everything: notices may have been missed)."""
        self.authority_generation += 1
        kind, _, ident = notice.partition(":")
        if kind == "*":
            self.verified_key_tokens.clear()
            self._machine_ids.clear()
        elif kind == "key":
            for token in [t for t, hit in self.verified_key_tokens.items() if hit[0].id == ident]:
                del self.verified_key_tokens[token]
        elif kind == "machine":
            for name in [n for n, (mid, _) in self._machine_ids.items() if str(mid) == ident]:
                del self._machine_ids[name]
        for hook in self.on_forget:
            hook(notice)

    async def _announce(self, tx: Tx, notice: str) -> None:
        """Several nodes: tell every node's ``forget`` of ``notice`` when (and only if) ``tx`` commits
        (PostgreSQL delivers a NOTIFY sent in a transaction at its commit)."""
        if self.shared:
            await tx.execute("SELECT pg_notify(?, ?)", (AUTHORITY_CHANNEL, notice))

    # Provided by Store.
    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    async def _read_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        raise NotImplementedError

    async def _page(self, sql: str, params: Sequence[Any], cursor: str | None, key_column: str) -> Page:
        """``sql`` selects rows with ``created_ms`` and ``key_column``; it must end with a WHERE clause."""
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
        return Page(rows, next_cursor)

    # -- secrets ----------------------------------------------------------------------------------------

    async def server_secret(self, name: str, now_ms: int) -> str:
        """A random secret the server keeps in its database (created on first use)."""
        row = await self._read_one("SELECT value FROM server_secrets WHERE name = ?", (name,))
        if row is not None:
            return str(row["value"])
        value = secrets.token_urlsafe(48)

        async def op(tx: Tx) -> str:
            await tx.execute(
                "INSERT INTO server_secrets (name, value, created_ms) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, value, now_ms),
            )
            found = await tx.fetchone("SELECT value FROM server_secrets WHERE name = ?", (name,))
            assert found is not None
            return str(found[0])

        return await self.write(op)

    async def claim_once(self, name: str, now_ms: int) -> bool:
        """True for the one caller, of all nodes and all time, that claims ``name`` first."""

        async def op(tx: Tx) -> bool:
            row = await tx.fetchone(
                "INSERT INTO server_secrets (name, value, created_ms) VALUES (?, '', ?)"
                " ON CONFLICT (name) DO NOTHING RETURNING name",
                (f"claimed:{name}", now_ms),
            )
            return row is not None

        return await self.write(op)

    # -- users and orgs ----------------------------------------------------------------------------------

    async def count_users(self) -> int:
        row = await self._read_one("SELECT COUNT(*) AS n FROM users")
        return int(row["n"]) if row else 0

    async def create_user(self, name: str, email: str | None, now_ms: int) -> str:
        user_id = new_id("usr")

        async def op(tx: Tx) -> str:
            await tx.execute(
                "INSERT INTO users (id, name, email, created_ms) VALUES (?, ?, ?, ?)", (user_id, name, email, now_ms)
            )
            return user_id

        return await self.write(op)

    async def user(self, user_id: str) -> Row | None:
        return await self._read_one("SELECT id, name, email, token_generation FROM users WHERE id = ?", (user_id,))

    async def memberships(self, user_id: str) -> dict[str, str]:
        rows = await self._read("SELECT org_id, role FROM org_members WHERE user_id = ?", (user_id,))
        return {r["org_id"]: r["role"] for r in rows}

    async def orgs_page(self, user_id: str, cursor: str | None) -> Page:
        return await self._page(
            "SELECT o.id, o.name, o.created_ms, o.limits_json, m.role FROM orgs o"
            " JOIN org_members m ON m.org_id = o.id WHERE m.user_id = ?",
            [user_id],
            cursor,
            "id",
        )

    async def provision_org(
        self,
        name: str,
        now_ms: int,
        *,
        members: Sequence[tuple[str, str]],
        keys: Sequence[Mapping[str, Any]] = (),
        identity_providers: Sequence[Mapping[str, Any]] = (),
        token_providers: Sequence[Mapping[str, Any]] = (),
        org_id: str | None = None,
    ) -> str:
        """Create an org with its members, keys and providers in one transaction."""
        org = org_id or new_id("org")

        async def op(tx: Tx) -> str:
            await tx.execute("INSERT INTO orgs (id, name, created_ms) VALUES (?, ?, ?)", (org, name, now_ms))
            for user_id, role in members:
                await tx.execute(
                    "INSERT INTO org_members (org_id, user_id, role, created_ms) VALUES (?, ?, ?, ?)",
                    (org, user_id, role, now_ms),
                )
            for key in keys:
                await tx.execute(
                    "INSERT INTO api_keys (id, org_id, name, secret, scopes_json, created_by, created_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        key["id"],
                        org,
                        key["name"],
                        key["secret"],
                        _dumps(list(key["scopes"])),
                        key.get("created_by"),
                        now_ms,
                    ),
                )
            for idp in identity_providers:
                await self._upsert_idp(tx, org, idp, now_ms)
            for provider in token_providers:
                await self._upsert_token_provider(tx, org, provider, now_ms)
            return org

        return await self.write(op)

    # -- keys ------------------------------------------------------------------------------------------

    async def create_key(
        self, org_id: str, name: str, scopes: Sequence[str], secret: str, created_by: str | None, now_ms: int
    ) -> str:
        key_id = new_id("sbk")

        async def op(tx: Tx) -> str:
            await tx.execute(
                "INSERT INTO api_keys (id, org_id, name, secret, scopes_json, created_by, created_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, org_id, name, secret, _dumps(list(scopes)), created_by, now_ms),
            )
            return key_id

        return await self.write(op)

    async def key_row(self, key_id: str) -> Row | None:
        return await self._read_one(
            "SELECT id, org_id, name, secret, scopes_json FROM api_keys WHERE id = ?", (key_id,)
        )

    async def keys_page(self, org_id: str, cursor: str | None) -> Page:
        return await self._page(
            "SELECT id, name, scopes_json, created_ms FROM api_keys WHERE org_id = ?", [org_id], cursor, "id"
        )

    async def delete_key(self, org_id: str, key_id: str) -> None:
        async def op(tx: Tx) -> None:
            if await tx.execute("DELETE FROM api_keys WHERE org_id = ? AND id = ?", (org_id, key_id)) != 1:
                raise NotFound(f"key {key_id!r} not found")
            await self._announce(tx, f"key:{key_id}")

        await self.write(op)
        self.forget(f"key:{key_id}")  # after the commit: no request verified from now on uses it

    # -- machines and versions ------------------------------------------------------------------------

    async def machine(self, org_id: str, slug: str) -> MachineRow:
        row = await self._read_one(
            "SELECT id, org_id, slug, indexes_json, current_version_id, created_ms FROM machines"
            " WHERE org_id = ? AND slug = ?",
            (org_id, slug),
        )
        if row is None:
            raise NotFound(f"machine {slug!r} not found")
        return MachineRow(
            row["id"],
            row["org_id"],
            row["slug"],
            json.loads(row["indexes_json"]),
            row["current_version_id"],
            row["created_ms"],
        )

    async def machines_page(self, org_id: str, cursor: str | None) -> Page:
        return await self._page(
            "SELECT m.id, m.slug, m.created_ms, m.current_version_id, v.created_ms AS version_created_ms,"
            " v.client_info FROM machines m LEFT JOIN machine_versions v ON v.id = m.current_version_id"
            " WHERE m.org_id = ?",
            [org_id],
            cursor,
            "id",
        )

    async def delete_machine(self, machine_id: int) -> None:
        async def op(tx: Tx) -> None:
            if await tx.fetchone("SELECT 1 FROM instances WHERE machine_id = ? LIMIT 1", (machine_id,)) is not None:
                raise Conflict("the machine still has instances; delete them first")
            await tx.execute("UPDATE machines SET current_version_id = NULL WHERE id = ?", (machine_id,))
            await tx.execute("DELETE FROM machines WHERE id = ?", (machine_id,))
            await self._announce(tx, f"machine:{machine_id}")

        await self.write(op)
        self.forget(f"machine:{machine_id}")

    async def version_info(self, version_id: str | None) -> VersionInfo | None:
        if version_id is None:
            return None
        row = await self._read_one(
            "SELECT id, created_ms, client_info FROM machine_versions WHERE id = ?", (version_id,)
        )
        return None if row is None else VersionInfo(row["id"], row["created_ms"], row["client_info"])

    async def versions_page(self, machine_id: int, cursor: str | None) -> Page:
        return await self._page(
            "SELECT id, created_ms, client_info FROM machine_versions WHERE machine_id = ? AND status = 'final'",
            [machine_id],
            cursor,
            "id",
        )

    async def create_provisional_version(self, machine_id: int, now_ms: int) -> str:
        version_id = new_id("ver")

        async def op(tx: Tx) -> str:
            await tx.execute(
                "INSERT INTO machine_versions (id, machine_id, status, created_ms) VALUES (?, ?, 'provisional', ?)",
                (version_id, machine_id, now_ms),
            )
            return version_id

        return await self.write(op)

    async def store_upload(self, version_id: str, source: bytes, source_name: str) -> None:
        """Attach uploaded code to a provisional version (once)."""

        async def op(tx: Tx) -> None:
            changed = await tx.execute(
                "UPDATE machine_versions SET source = ?, source_name = ?"
                " WHERE id = ? AND status = 'provisional' AND source IS NULL",
                (source, source_name, version_id),
            )
            if changed != 1:
                raise Conflict("this upload URL was already used, or its version is finalized")

        await self.write(op)

    async def provisional_version(self, version_id: str) -> Row | None:
        return await self._read_one(
            "SELECT id, machine_id, status, source, source_name FROM machine_versions WHERE id = ?", (version_id,)
        )

    async def finalize_version(
        self,
        version_id: str,
        *,
        bundle: str,
        bundle_hash: str,
        xstate_major: int,
        self_contained: bool,
        client_info: str,
        index_selectors: Mapping[str, str],
        make_current: bool,
    ) -> None:
        async def op(tx: Tx) -> None:
            changed = await tx.execute(
                "UPDATE machine_versions SET status = 'final', bundle = ?, bundle_hash = ?, xstate_major = ?,"
                " runtime_api = ?, client_info = ?, index_selectors_json = ? WHERE id = ? AND status = 'provisional'",
                (
                    bundle,
                    bundle_hash,
                    xstate_major,
                    int(self_contained),
                    client_info,
                    _dumps(dict(index_selectors)),
                    version_id,
                ),
            )
            if changed != 1:
                raise Conflict("this version is already finalized")
            if make_current:
                await tx.execute(
                    "UPDATE machines SET current_version_id = ?"
                    " WHERE id = (SELECT machine_id FROM machine_versions WHERE id = ?)",
                    (version_id, version_id),
                )

        await self.write(op)

    # -- instances (directory views) ------------------------------------------------------------------

    async def instances_page(self, machine_id: int, cursor: str | None) -> Page:
        return await self._page(
            "SELECT i.id, i.name, i.status, i.created_ms, v.id AS version_id, v.created_ms AS version_created_ms,"
            " v.client_info FROM instances i JOIN machine_versions v ON v.id = i.version_id WHERE i.machine_id = ?",
            [machine_id],
            cursor,
            "id",
        )

    async def transitions_page(self, instance_id: int, cursor: str | None) -> Page:
        return await self._page(
            "SELECT seq AS id, created_ms, state_json, event_json FROM transitions WHERE instance_id = ?",
            [instance_id],
            cursor,
            "id",
        )

    async def set_desired_version(self, instance_id: int, version_id: str | None) -> None:
        async def op(tx: Tx) -> None:
            await tx.execute("UPDATE instances SET desired_version_id = ? WHERE id = ?", (version_id, instance_id))

        await self.write(op)

    async def migration_edges(self, machine_id: int) -> list[tuple[str, str, str]]:
        """(from version, to version, migration id) of every finalized migration, newest first."""
        rows = await self._read(
            "SELECT id, from_version_id, to_version_id FROM migrations WHERE machine_id = ? AND status = 'final'"
            " ORDER BY created_ms DESC, rowid DESC",
            (machine_id,),
        )
        return [(r["from_version_id"], r["to_version_id"], r["id"]) for r in rows]

    # -- migrations (wire-api 3.7): provisional, upload, finalize, as versions ------------------------

    async def create_provisional_migration(self, machine_id: int, from_id: str, to_id: str, now_ms: int) -> str:
        migration_id = new_id("mig")

        async def op(tx: Tx) -> str:
            await tx.execute(
                "INSERT INTO migrations (id, machine_id, from_version_id, to_version_id, status, created_ms)"
                " VALUES (?, ?, ?, ?, 'provisional', ?)",
                (migration_id, machine_id, from_id, to_id, now_ms),
            )
            return migration_id

        return await self.write(op)

    async def store_migration_upload(self, migration_id: str, source: bytes, source_name: str) -> None:
        """Attach uploaded code to a provisional migration (once)."""

        async def op(tx: Tx) -> None:
            changed = await tx.execute(
                "UPDATE migrations SET source = ?, source_name = ?"
                " WHERE id = ? AND status = 'provisional' AND source IS NULL",
                (source, source_name, migration_id),
            )
            if changed != 1:
                raise Conflict("this upload URL was already used, or its migration is finalized")

        await self.write(op)

    async def migration(self, migration_id: str) -> Row | None:
        return await self._read_one(
            "SELECT id, machine_id, from_version_id, to_version_id, status, source, source_name, bundle, bundle_hash"
            " FROM migrations WHERE id = ?",
            (migration_id,),
        )

    async def finalize_migration(self, migration_id: str, *, bundle: str, bundle_hash: str) -> None:
        async def op(tx: Tx) -> None:
            changed = await tx.execute(
                "UPDATE migrations SET status = 'final', bundle = ?, bundle_hash = ?"
                " WHERE id = ? AND status = 'provisional'",
                (bundle, bundle_hash, migration_id),
            )
            if changed != 1:
                raise Conflict("this migration is already finalized")

        await self.write(op)

    # -- indexes (wire-api 3.10) ----------------------------------------------------------------------
    # The entries themselves are written by Store.commit_round (RoundCommit.index_values), in the
    # transaction of the round that produced them.

    async def version_selectors(self, version_id: str | None) -> dict[str, str]:
        """A version's index selectors (index name -> JSONPath); {} for no or an unknown version."""
        if version_id is None:
            return {}
        row = await self._read_one("SELECT index_selectors_json FROM machine_versions WHERE id = ?", (version_id,))
        if row is None:
            return {}
        selectors = json.loads(row["index_selectors_json"])
        return {str(k): v for k, v in selectors.items() if isinstance(v, str)} if isinstance(selectors, dict) else {}

    async def index_query(
        self,
        machine_id: int,
        index: str,
        op: str | None,
        value: str | None,
        descending: bool,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[tuple[str, str]], str | None]:
        """One page of ``index`` of a machine: (index value, instance name) pairs, in (value, name) order.

        ``op`` (a key of :data:`INDEX_OPERATORS`) compares each entry's value with ``value``; None
        selects every entry. Values compare as SQLite's BINARY collation does, i.e. by Unicode code
        point. Keyset pagination on (value, name), which is unique within an index: the cursor is
        the base64url of the page's last pair, so paging neither repeats nor skips an entry that
        did not change in between. The next cursor is None on the last page.
        """
        after = decode_index_cursor(cursor)
        where = ["i.machine_id = ?", "e.index_name = ?"]
        params: list[Any] = [machine_id, index]
        if op is not None:
            where.append(f"e.value {INDEX_OPERATORS[op]} ?")
            params.append(value)
        if after is not None:
            where.append(f"(e.value, i.name) {'<' if descending else '>'} (?, ?)")
            params.extend(after)
        order = "DESC" if descending else "ASC"
        rows = await self._read(
            "SELECT e.value AS value, i.name AS name FROM index_entries e JOIN instances i ON i.id = e.instance_id"
            f" WHERE {' AND '.join(where)} ORDER BY e.value {order}, i.name {order} LIMIT ?",
            [*params, limit + 1],
        )
        pairs = [(str(r["value"]), str(r["name"])) for r in rows[:limit]]
        more = len(rows) > limit
        return pairs, (encode_index_cursor(*pairs[-1]) if more and pairs else None)

    # -- identity and token providers -----------------------------------------------------------------

    async def _upsert_idp(self, tx: Tx, org_id: str, idp: Mapping[str, Any], now_ms: int) -> None:
        await tx.execute(
            "INSERT INTO identity_providers (org_id, aud, iss, key, jwks_url, algs_json, mapping_json, created_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (org_id, aud, iss) DO UPDATE SET key = excluded.key,"
            " jwks_url = excluded.jwks_url, algs_json = excluded.algs_json, mapping_json = excluded.mapping_json",
            (
                org_id,
                idp.get("aud") or "",
                idp.get("iss") or "",
                idp.get("key"),
                idp.get("jwks_url"),
                _dumps(list(idp["algs"])),
                _dumps(idp["mapping"]),
                now_ms,
            ),
        )

    async def upsert_identity_provider(self, org_id: str, idp: Mapping[str, Any], now_ms: int) -> None:
        async def op(tx: Tx) -> None:
            await self._upsert_idp(tx, org_id, idp, now_ms)

        await self.write(op)

    async def delete_identity_provider(self, org_id: str, aud: str | None, iss: str | None) -> None:
        async def op(tx: Tx) -> None:
            await tx.execute(
                "DELETE FROM identity_providers WHERE org_id = ? AND aud = ? AND iss = ?",
                (org_id, aud or "", iss or ""),
            )

        await self.write(op)

    async def identity_provider_rows(self, org_id: str) -> list[Row]:
        return await self._read(
            "SELECT org_id, aud, iss, key, jwks_url, algs_json, mapping_json FROM identity_providers WHERE org_id = ?",
            (org_id,),
        )

    async def identity_providers_page(self, org_id: str, cursor: str | None) -> Page:
        return await self._page(
            # aud and iss joined by a unit separator (PostgreSQL's text cannot hold NUL)
            "SELECT aud || ? || iss AS id, aud, iss, jwks_url, algs_json, mapping_json, created_ms"
            " FROM identity_providers WHERE org_id = ?",
            ["\x1f", org_id],
            cursor,
            "id",
        )

    async def _upsert_token_provider(self, tx: Tx, org_id: str, provider: Mapping[str, Any], now_ms: int) -> None:
        await tx.execute(
            "INSERT INTO token_providers (org_id, service, key_id, mapping_json, created_ms) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (org_id, service) DO UPDATE SET key_id = excluded.key_id,"
            " mapping_json = excluded.mapping_json",
            (org_id, provider["service"], provider["key_id"], _dumps(provider["mapping"]), now_ms),
        )

    async def upsert_token_provider(self, org_id: str, provider: Mapping[str, Any], now_ms: int) -> None:
        async def op(tx: Tx) -> None:
            await self._upsert_token_provider(tx, org_id, provider, now_ms)

        await self.write(op)

    async def delete_token_provider(self, org_id: str, service: str) -> None:
        async def op(tx: Tx) -> None:
            await tx.execute("DELETE FROM token_providers WHERE org_id = ? AND service = ?", (org_id, service))

        await self.write(op)

    async def token_provider_row(self, org_id: str, service: str) -> Row | None:
        return await self._read_one(
            "SELECT org_id, service, key_id, mapping_json FROM token_providers WHERE org_id = ? AND service = ?",
            (org_id, service),
        )

    async def token_providers_page(self, org_id: str, cursor: str | None) -> Page:
        return await self._page(
            "SELECT service AS id, service, key_id, mapping_json, created_ms FROM token_providers WHERE org_id = ?",
            [org_id],
            cursor,
            "id",
        )

    # -- invitations ----------------------------------------------------------------------------------

    async def create_invitation(self, org_id: str, email: str, role: str, invited_by: str | None, now_ms: int) -> str:
        code = secrets.token_urlsafe(24)

        async def op(tx: Tx) -> str:
            await tx.execute(
                "INSERT INTO invitations (code, org_id, email, role, invited_by, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (code, org_id, email, role, invited_by, now_ms),
            )
            return code

        return await self.write(op)

    async def accept_invitation(self, code: str, user_id: str, now_ms: int) -> str:
        async def op(tx: Tx) -> str:
            row = await tx.fetchone(
                "SELECT org_id, role FROM invitations WHERE code = ? AND accepted_by IS NULL", (code,)
            )
            if row is None:
                raise NotFound("no open invitation with that code")
            await tx.execute("UPDATE invitations SET accepted_by = ? WHERE code = ?", (user_id, code))
            await tx.execute(
                "INSERT INTO org_members (org_id, user_id, role, created_ms) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
                (row[0], user_id, row[1], now_ms),
            )
            return str(row[0])

        return await self.write(op)
