"""Orgs, keys, members and invitations (wire-api 3.2-3.4, 3.14-3.15)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runtime import Clock

from ..ids import new_secret
from ..orgs import create_org
from ..store import Store
from ..store_directory import Page
from ..store_orgs import KeyRow, OrgRow

__all__ = ["CreatedKey", "KeyRow", "OrgRow", "OrgService", "Page"]


@dataclass(frozen=True)
class CreatedKey:
    id: str
    secret: str
    """Shown once, at creation; never read back."""


class OrgService:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._orgs = store.orgs
        self._store = store
        self._clock = clock

    async def orgs_of(self, user_id: str, cursor: str | None) -> Page[OrgRow]:
        return await self._orgs.orgs_page(user_id, cursor)

    async def create_org(self, name: str, creator: str, *, allow_anonymous: bool) -> str:
        return await create_org(self._store, name, creator, self._clock.now_ms(), allow_anonymous=allow_anonymous)

    async def keys(self, org_id: str, cursor: str | None) -> Page[KeyRow]:
        return await self._orgs.keys_page(org_id, cursor)

    async def create_key(self, org_id: str, name: str, scopes: Sequence[str], created_by: str | None) -> CreatedKey:
        secret = new_secret()
        key_id = await self._orgs.create_key(org_id, name, scopes, secret, created_by, self._clock.now_ms())
        return CreatedKey(key_id, secret)

    async def delete_key(self, org_id: str, key_id: str) -> None:
        """NotFound for a key of another org or none; revokes its tokens on every node."""
        await self._orgs.delete_key(org_id, key_id)

    async def invite(self, org_id: str, email: str, role: str, invited_by: str | None) -> str:
        """The invitation's code."""
        return await self._orgs.create_invitation(org_id, email, role, invited_by, self._clock.now_ms())

    async def accept_invitation(self, code: str, user_id: str) -> str:
        """The org the user joined."""
        return await self._orgs.accept_invitation(code, user_id, self._clock.now_ms())
