"""Users, orgs and their members, invitations, API keys and the server's own secrets: a repository
of the directory (server/store_directory.py)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .db import Database, Row, Tx
from .errors import NotFound
from .ids import new_id
from .jsoncodec import dumps as _dumps
from .store_directory import Authority, Page, Repository
from .store_providers import IdentityProviderRow, ProviderRepository, TokenProviderRow

__all__ = ["KeyRow", "NewKey", "OrgRepository", "OrgRow", "UserRow"]


@dataclass(frozen=True)
class UserRow:
    id: str
    name: str
    email: str | None
    token_generation: int
    """Bumped to revoke every admin token issued to the user."""


@dataclass(frozen=True)
class OrgRow:
    """An org as one of its members sees it."""

    id: str
    name: str
    role: str
    created_ms: int
    limits: dict[str, Any]
    """Overrides of the default limits (empty: none)."""


@dataclass(frozen=True)
class KeyRow:
    """An API key (immutable once created). ``secret`` is empty in lists (never read back there)."""

    id: str
    org_id: str
    name: str
    secret: str
    scopes: tuple[str, ...]
    created_ms: int


@dataclass(frozen=True)
class NewKey:
    """A key to create with an org (``provision_org``)."""

    id: str
    name: str
    secret: str
    scopes: tuple[str, ...]
    created_by: str | None


def _key(r: Row) -> KeyRow:
    return KeyRow(r["id"], r["org_id"], r["name"], r["secret"], tuple(json.loads(r["scopes_json"])), r["created_ms"])


class OrgRepository(Repository):
    def __init__(self, db: Database, authority: Authority, providers: ProviderRepository) -> None:
        super().__init__(db, authority)
        self.providers = providers

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

    async def user(self, user_id: str) -> UserRow | None:
        row = await self._read_one("SELECT id, name, email, token_generation FROM users WHERE id = ?", (user_id,))
        return None if row is None else UserRow(row["id"], row["name"], row["email"], row["token_generation"])

    async def memberships(self, user_id: str) -> dict[str, str]:
        """The user's orgs: org id -> role."""
        rows = await self._read("SELECT org_id, role FROM org_members WHERE user_id = ?", (user_id,))
        return {r["org_id"]: r["role"] for r in rows}

    async def orgs_page(self, user_id: str, cursor: str | None) -> Page[OrgRow]:
        return await self._page(
            "SELECT o.id, o.name, o.created_ms, o.limits_json, m.role FROM orgs o"
            " JOIN org_members m ON m.org_id = o.id WHERE m.user_id = ?",
            [user_id],
            cursor,
            "id",
            lambda r: OrgRow(r["id"], r["name"], r["role"], r["created_ms"], json.loads(r["limits_json"])),
        )

    async def create_org(self, name: str, now_ms: int) -> str:
        """A bare org, without members (tests and tools; the API provisions orgs)."""
        return await self.provision_org(name, now_ms, members=())

    async def provision_org(
        self,
        name: str,
        now_ms: int,
        *,
        members: Sequence[tuple[str, str]],
        keys: Sequence[NewKey] = (),
        identity_providers: Sequence[IdentityProviderRow] = (),
        token_providers: Sequence[TokenProviderRow] = (),
        org_id: str | None = None,
    ) -> str:
        """Create an org with its members, keys and providers in one transaction (the providers'
        ``org_id`` must be ``org_id``)."""
        org = org_id or new_id("org")

        async def op(tx: Tx) -> str:
            await tx.execute("INSERT INTO orgs (id, name, created_ms) VALUES (?, ?, ?)", (org, name, now_ms))
            for user_id, role in members:
                await tx.execute(
                    "INSERT INTO org_members (org_id, user_id, role, created_ms) VALUES (?, ?, ?, ?)",
                    (org, user_id, role, now_ms),
                )
            for key in keys:
                await self._insert_key(tx, org, key, now_ms)
            for idp in identity_providers:
                await self.providers.upsert_identity_provider_in(tx, idp, now_ms)
            for provider in token_providers:
                await self.providers.upsert_token_provider_in(tx, provider, now_ms)
            return org

        return await self.write(op)

    # -- keys ------------------------------------------------------------------------------------------

    @staticmethod
    async def _insert_key(tx: Tx, org_id: str, key: NewKey, now_ms: int) -> None:
        await tx.execute(
            "INSERT INTO api_keys (id, org_id, name, secret, scopes_json, created_by, created_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key.id, org_id, key.name, key.secret, _dumps(list(key.scopes)), key.created_by, now_ms),
        )

    async def create_key(
        self, org_id: str, name: str, scopes: Sequence[str], secret: str, created_by: str | None, now_ms: int
    ) -> str:
        key = NewKey(new_id("sbk"), name, secret, tuple(scopes), created_by)

        async def op(tx: Tx) -> str:
            await self._insert_key(tx, org_id, key, now_ms)
            return key.id

        return await self.write(op)

    async def key(self, key_id: str) -> KeyRow | None:
        row = await self._read_one(
            "SELECT id, org_id, name, secret, scopes_json, created_ms FROM api_keys WHERE id = ?", (key_id,)
        )
        return None if row is None else _key(row)

    async def keys_page(self, org_id: str, cursor: str | None) -> Page[KeyRow]:
        return await self._page(
            "SELECT id, org_id, name, '' AS secret, scopes_json, created_ms FROM api_keys WHERE org_id = ?",
            [org_id],
            cursor,
            "id",
            _key,
        )

    async def delete_key(self, org_id: str, key_id: str) -> None:
        async def op(tx: Tx) -> None:
            if await tx.execute("DELETE FROM api_keys WHERE org_id = ? AND id = ?", (org_id, key_id)) != 1:
                raise NotFound(f"key {key_id!r} not found")
            await self.authority.announce(tx, f"key:{key_id}")

        await self.write(op)
        self.authority.forget(f"key:{key_id}")  # after the commit: no request verified from now on uses it

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
