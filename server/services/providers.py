"""Identity providers, token providers and token exchange (wire-api 2.7-2.9, 3.11-3.12)."""

from __future__ import annotations

from typing import Any

from runtime import Clock

from ..errors import InvalidParameter
from ..exchange import JwksCache, KeyRecord, exchange, validate_identity_provider, validate_mapping
from ..store import Store
from ..store_directory import Page
from ..store_providers import IdentityProviderRow, TokenProviderRow

__all__ = ["IdentityProviderRow", "ProviderService", "TokenProviderRow"]


class _Directory:
    """The store seen as the exchange module's ExchangeDirectory."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def token_provider(self, org_id: str, service: str) -> TokenProviderRow | None:
        return await self._store.providers.token_provider(org_id, service)

    async def identity_providers(self, org_id: str) -> list[IdentityProviderRow]:
        return await self._store.providers.identity_providers(org_id)

    async def key(self, key_id: str) -> KeyRecord | None:
        row = await self._store.orgs.key(key_id)
        return None if row is None else KeyRecord(row.id, row.org_id, row.secret, row.scopes)


class ProviderService:
    def __init__(self, store: Store, clock: Clock, jwks: JwksCache) -> None:
        self._store = store
        self._providers = store.providers
        self._clock = clock
        self._jwks = jwks
        self._directory = _Directory(store)

    async def identity_providers(self, org_id: str, cursor: str | None) -> Page[IdentityProviderRow]:
        return await self._providers.identity_providers_page(org_id, cursor)

    async def upsert_identity_provider(self, idp: IdentityProviderRow) -> None:
        """InvalidParameter naming the field unless ``idp`` can be stored."""
        validate_identity_provider(idp)
        await self._providers.upsert_identity_provider(idp, self._clock.now_ms())

    async def delete_identity_provider(self, org_id: str, aud: str | None, iss: str | None) -> None:
        await self._providers.delete_identity_provider(org_id, aud, iss)

    async def token_providers(self, org_id: str, cursor: str | None) -> Page[TokenProviderRow]:
        return await self._providers.token_providers_page(org_id, cursor)

    async def upsert_token_provider(self, org_id: str, service: str, key_id: Any, mapping: Any) -> None:
        """The provider signs with ``key_id``, which must be a key of the org."""
        key = await self._store.orgs.key(key_id) if isinstance(key_id, str) else None
        if key is None or key.org_id != org_id:
            raise InvalidParameter("keyId must be a key of this org", parameter="keyId")
        if not isinstance(mapping, dict):
            raise InvalidParameter("mapping must be a JSON object", parameter="mapping")
        validate_mapping(mapping)
        await self._providers.upsert_token_provider(
            TokenProviderRow(org_id, service, key.id, mapping), self._clock.now_ms()
        )

    async def delete_token_provider(self, org_id: str, service: str) -> None:
        await self._providers.delete_token_provider(org_id, service)

    async def exchange(self, subject_token: str, audience: str) -> str:
        """An access token for ``subject_token`` (RFC 8693-style, wire-api 2.7)."""
        return await exchange(
            self._directory,
            subject_token=subject_token,
            audience=audience,
            now_s=self._clock.now_ms() // 1000,
            jwks=self._jwks,
        )
