"""Identity providers and token providers of an org (wire-api 2.7-2.9, 3.11-3.12): a repository of
the directory (server/store_directory.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .db import Row, Tx
from .jsoncodec import dumps as _dumps
from .store_directory import Page, Repository

__all__ = ["IdentityProviderRow", "ProviderRepository", "TokenProviderRow"]


@dataclass(frozen=True)
class IdentityProviderRow:
    """An identity provider: tokens it signs are exchanged for the org's (matched on ``aud``/``iss``)."""

    org_id: str
    aud: str | None
    iss: str | None
    algs: tuple[str, ...]
    key: str | None
    jwks_url: str | None
    mapping: dict[str, Any]


@dataclass(frozen=True)
class TokenProviderRow:
    """A token provider: exchanged tokens for ``service`` are signed with the org's key ``key_id``."""

    org_id: str
    service: str
    key_id: str
    mapping: dict[str, Any]


def _idp(r: Row) -> IdentityProviderRow:
    return IdentityProviderRow(
        r["org_id"],
        r["aud"] or None,
        r["iss"] or None,
        tuple(json.loads(r["algs_json"])),
        r["key"],
        r["jwks_url"],
        json.loads(r["mapping_json"]),
    )


def _token_provider(r: Row) -> TokenProviderRow:
    return TokenProviderRow(r["org_id"], r["service"], r["key_id"], json.loads(r["mapping_json"]))


class ProviderRepository(Repository):
    async def upsert_identity_provider_in(self, tx: Tx, idp: IdentityProviderRow, now_ms: int) -> None:
        await tx.execute(
            "INSERT INTO identity_providers (org_id, aud, iss, key, jwks_url, algs_json, mapping_json, created_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (org_id, aud, iss) DO UPDATE SET key = excluded.key,"
            " jwks_url = excluded.jwks_url, algs_json = excluded.algs_json, mapping_json = excluded.mapping_json",
            (
                idp.org_id,
                idp.aud or "",
                idp.iss or "",
                idp.key,
                idp.jwks_url,
                _dumps(list(idp.algs)),
                _dumps(idp.mapping),
                now_ms,
            ),
        )

    async def upsert_identity_provider(self, idp: IdentityProviderRow, now_ms: int) -> None:
        async def op(tx: Tx) -> None:
            await self.upsert_identity_provider_in(tx, idp, now_ms)

        await self.write(op)

    async def delete_identity_provider(self, org_id: str, aud: str | None, iss: str | None) -> None:
        async def op(tx: Tx) -> None:
            await tx.execute(
                "DELETE FROM identity_providers WHERE org_id = ? AND aud = ? AND iss = ?",
                (org_id, aud or "", iss or ""),
            )

        await self.write(op)

    async def identity_providers(self, org_id: str) -> list[IdentityProviderRow]:
        rows = await self._read(
            "SELECT org_id, aud, iss, key, jwks_url, algs_json, mapping_json FROM identity_providers WHERE org_id = ?",
            (org_id,),
        )
        return [_idp(r) for r in rows]

    async def identity_providers_page(self, org_id: str, cursor: str | None) -> Page[IdentityProviderRow]:
        return await self._page(
            # aud and iss joined by a unit separator (PostgreSQL's text cannot hold NUL)
            "SELECT aud || ? || iss AS id, org_id, aud, iss, key, jwks_url, algs_json, mapping_json, created_ms"
            " FROM identity_providers WHERE org_id = ?",
            ["\x1f", org_id],
            cursor,
            "id",
            _idp,
        )

    async def upsert_token_provider_in(self, tx: Tx, provider: TokenProviderRow, now_ms: int) -> None:
        await tx.execute(
            "INSERT INTO token_providers (org_id, service, key_id, mapping_json, created_ms) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (org_id, service) DO UPDATE SET key_id = excluded.key_id,"
            " mapping_json = excluded.mapping_json",
            (provider.org_id, provider.service, provider.key_id, _dumps(provider.mapping), now_ms),
        )

    async def upsert_token_provider(self, provider: TokenProviderRow, now_ms: int) -> None:
        async def op(tx: Tx) -> None:
            await self.upsert_token_provider_in(tx, provider, now_ms)

        await self.write(op)

    async def delete_token_provider(self, org_id: str, service: str) -> None:
        async def op(tx: Tx) -> None:
            await tx.execute("DELETE FROM token_providers WHERE org_id = ? AND service = ?", (org_id, service))

        await self.write(op)

    async def token_provider(self, org_id: str, service: str) -> TokenProviderRow | None:
        row = await self._read_one(
            "SELECT org_id, service, key_id, mapping_json FROM token_providers WHERE org_id = ? AND service = ?",
            (org_id, service),
        )
        return None if row is None else _token_provider(row)

    async def token_providers_page(self, org_id: str, cursor: str | None) -> Page[TokenProviderRow]:
        return await self._page(
            "SELECT service AS id, org_id, service, key_id, mapping_json, created_ms FROM token_providers"
            " WHERE org_id = ?",
            [org_id],
            cursor,
            "id",
            _token_provider,
        )
