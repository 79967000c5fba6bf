"""Creating orgs, users and keys: shared by the API (POST /orgs, POST /keys) and first-start bootstrap."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .auth import USE_PRESETS
from .exchange import anonymous_idp, anonymous_token_provider
from .ids import new_id, new_secret
from .store import Store

__all__ = ["create_org"]


async def create_org(store: Store, name: str, creator: str, now_ms: int, *, allow_anonymous: bool = True) -> str:
    """An org whose creator is its admin; with anonymous access, the key, identity provider and
    token provider that anonymous client sessions exchange tokens through (wire-api 2.9)."""
    org_id = new_id("org")
    keys: list[dict[str, Any]] = []
    idps: list[dict[str, Any]] = []
    providers: list[dict[str, Any]] = []
    if allow_anonymous:
        key_id = new_id("sbk")
        keys.append(
            {
                "id": key_id,
                "name": "anonymous-sessions",
                "secret": new_secret(),
                "scopes": USE_PRESETS["production"],
                "created_by": creator,
            }
        )
        idp = anonymous_idp(org_id)
        idps.append(
            {
                "aud": idp.aud,
                "iss": idp.iss,
                "key": idp.key,
                "jwks_url": idp.jwks_url,
                "algs": idp.algs,
                "mapping": idp.mapping,
            }
        )
        provider = anonymous_token_provider(org_id, key_id)
        providers.append({"service": provider.service, "key_id": provider.key_id, "mapping": provider.mapping})
    members: Sequence[tuple[str, str]] = [(creator, "admin")]
    return await store.provision_org(
        name, now_ms, members=members, keys=keys, identity_providers=idps, token_providers=providers, org_id=org_id
    )
