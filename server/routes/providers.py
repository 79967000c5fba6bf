"""Identity providers, token providers and token exchange (wire-api 2.7-2.9, 3.11-3.12)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..errors import InvalidParameter
from ..exchange import (
    IdentityProviderRecord,
    KeyRecord,
    TokenProviderRecord,
    exchange,
    validate_identity_provider,
    validate_mapping,
)
from ..store import Store
from .common import ENGINE, JWKS, caller, form_body, json_body, name, ok, only, page_response

routes = web.RouteTableDef()

ALGORITHMS = frozenset(
    {
        "HS256",
        "HS384",
        "HS512",
        "PS256",
        "PS384",
        "PS512",
        "RS256",
        "RS384",
        "RS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
    }
)
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


class StoreDirectory:
    """The store seen as the exchange module's ExchangeDirectory."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def token_provider(self, org_id: str, service: str) -> TokenProviderRecord | None:
        row = await self.store.token_provider_row(org_id, service)
        if row is None:
            return None
        return TokenProviderRecord(row["org_id"], row["service"], row["key_id"], json.loads(row["mapping_json"]))

    async def identity_providers(self, org_id: str) -> list[IdentityProviderRecord]:
        return [
            IdentityProviderRecord(
                r["org_id"],
                r["aud"] or None,
                r["iss"] or None,
                tuple(json.loads(r["algs_json"])),
                r["key"],
                r["jwks_url"],
                json.loads(r["mapping_json"]),
            )
            for r in await self.store.identity_provider_rows(org_id)
        ]

    async def key(self, key_id: str) -> KeyRecord | None:
        row = await self.store.key_row(key_id)
        if row is None:
            return None
        return KeyRecord(row["id"], row["org_id"], row["secret"], tuple(json.loads(row["scopes_json"])))


def _optional_str(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 2048:
        raise InvalidParameter(f"{field} must be a string", parameter=field)
    return value


def _mapping(body: dict[str, Any]) -> dict[str, Any]:
    mapping = body.get("mapping")
    if not isinstance(mapping, dict):
        raise InvalidParameter("mapping must be a JSON object", parameter="mapping")
    validate_mapping(mapping)
    return mapping


@routes.get("/idps")
async def list_idps(request: web.Request) -> web.Response:
    org = (await caller(request)).require("tokens.admin")
    page = await request.app[ENGINE].store.identity_providers_page(org, request.query.get("cursor"))
    idps = []
    for r in page.rows:
        item: dict[str, Any] = {"algs": json.loads(r["algs_json"]), "mapping": json.loads(r["mapping_json"])}
        if r["aud"]:
            item["aud"] = r["aud"]
        if r["iss"]:
            item["iss"] = r["iss"]
        if r["jwks_url"]:
            item["jwksUrl"] = r["jwks_url"]
        idps.append(item)
    return page_response("idps", idps, page.cursor)


@routes.post("/idps")
async def upsert_idp(request: web.Request) -> web.Response:
    org = (await caller(request)).require("tokens.admin")
    body = await json_body(request)
    only(body, {"aud", "iss", "algs", "mapping", "key", "jwksUrl"})
    algs = body.get("algs")
    if not isinstance(algs, list) or not all(isinstance(a, str) for a in algs):
        raise InvalidParameter("algs must be a list of algorithm names", parameter="algs")
    mapping = body.get("mapping")
    if not isinstance(mapping, dict):
        raise InvalidParameter("mapping must be a JSON object", parameter="mapping")
    idp = IdentityProviderRecord(
        org,
        _optional_str(body, "aud"),
        _optional_str(body, "iss"),
        tuple(algs),
        _optional_str(body, "key"),
        _optional_str(body, "jwksUrl"),
        mapping,
    )
    validate_identity_provider(idp)
    engine = request.app[ENGINE]
    await engine.store.upsert_identity_provider(
        org,
        {
            "aud": idp.aud,
            "iss": idp.iss,
            "key": idp.key,
            "jwks_url": idp.jwks_url,
            "algs": list(idp.algs),
            "mapping": idp.mapping,
        },
        engine.clock.now_ms(),
    )
    return web.Response(status=204)


@routes.delete("/idps")
async def delete_idp(request: web.Request) -> web.Response:
    org = (await caller(request)).require("tokens.admin")
    body = await json_body(request)
    only(body, {"aud", "iss"})
    await request.app[ENGINE].store.delete_identity_provider(
        org, _optional_str(body, "aud"), _optional_str(body, "iss")
    )
    return web.Response(status=204)


@routes.get("/token-providers")
async def list_token_providers(request: web.Request) -> web.Response:
    org = (await caller(request)).require("tokens.admin")
    page = await request.app[ENGINE].store.token_providers_page(org, request.query.get("cursor"))
    providers = [
        {"service": r["service"], "keyId": r["key_id"], "mapping": json.loads(r["mapping_json"])} for r in page.rows
    ]
    return page_response("tokenProviders", providers, page.cursor)


@routes.post("/token-providers")
async def upsert_token_provider(request: web.Request) -> web.Response:
    org = (await caller(request)).require("tokens.admin")
    body = await json_body(request)
    only(body, {"keyId", "service", "mapping"})
    service = name(body.get("service"), "service")
    key_id = body.get("keyId")
    engine = request.app[ENGINE]
    key = await engine.store.key_row(key_id) if isinstance(key_id, str) else None
    if key is None or key["org_id"] != org:
        raise InvalidParameter("keyId must be a key of this org", parameter="keyId")
    await engine.store.upsert_token_provider(
        org, {"service": service, "key_id": key_id, "mapping": _mapping(body)}, engine.clock.now_ms()
    )
    return web.Response(status=204)


@routes.delete("/token-providers/{service}")
async def delete_token_provider(request: web.Request) -> web.Response:
    org = (await caller(request)).require("tokens.admin")
    await request.app[ENGINE].store.delete_token_provider(org, request.match_info["service"])
    return web.Response(status=204)


@routes.post("/tokens")
async def token_exchange(request: web.Request) -> web.Response:
    """RFC 8693-style exchange; unauthenticated (the subject token is the credential)."""
    fields = await form_body(request)
    if fields.get("grant_type") != GRANT_TYPE:
        raise InvalidParameter(f"grant_type must be {GRANT_TYPE}", parameter="grant_type")
    requested = fields.get("requested_token_type", fields.get("requested_token-type", ACCESS_TOKEN))
    if requested != ACCESS_TOKEN:
        raise InvalidParameter(f"requested_token_type must be {ACCESS_TOKEN}", parameter="requested_token_type")
    audience, subject = fields.get("audience"), fields.get("subject_token")
    if not audience:
        raise InvalidParameter("audience is required", parameter="audience")
    if not subject:
        raise InvalidParameter("subject_token is required", parameter="subject_token")
    engine = request.app[ENGINE]
    token = await exchange(
        StoreDirectory(engine.store),
        subject_token=subject,
        audience=audience,
        now_s=engine.clock.now_ms() // 1000,
        jwks=request.app[JWKS],
    )
    return ok({"access_token": token, "issued_token_type": ACCESS_TOKEN, "token_type": "Bearer"})
