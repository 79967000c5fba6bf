"""Creating orgs, users and keys: shared by the API (POST /orgs, POST /keys) and first-start bootstrap."""

from __future__ import annotations

from collections.abc import Sequence

from .auth import USE_PRESETS
from .exchange import anonymous_idp, anonymous_token_provider
from .ids import new_id, new_secret
from .store import Store
from .store_orgs import NewKey
from .store_providers import IdentityProviderRow, TokenProviderRow

__all__ = ["create_org"]


async def create_org(store: Store, name: str, creator: str, now_ms: int, *, allow_anonymous: bool = True) -> str:
    """An org whose creator is its admin; with anonymous access, the key, identity provider and
    token provider that anonymous client sessions exchange tokens through (wire-api 2.9)."""
    org_id = new_id("org")
    keys: list[NewKey] = []
    idps: list[IdentityProviderRow] = []
    providers: list[TokenProviderRow] = []
    if allow_anonymous:
        key = NewKey(new_id("sbk"), "anonymous-sessions", new_secret(), USE_PRESETS["production"], creator)
        keys.append(key)
        idps.append(anonymous_idp(org_id))
        providers.append(anonymous_token_provider(org_id, key.id))
    members: Sequence[tuple[str, str]] = [(creator, "admin")]
    return await store.orgs.provision_org(
        name, now_ms, members=members, keys=keys, identity_providers=idps, token_providers=providers, org_id=org_id
    )
