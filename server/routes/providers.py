"""Identity providers, token providers and token exchange (wire-api 2.7-2.9, 3.11-3.12)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import InvalidParameter
from ..services.providers import IdentityProviderRow
from .common import PROVIDERS, caller, form_body, json_body, name, ok, only, page_response

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


def _optional_str(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 2048:
        raise InvalidParameter(f"{field} must be a string", parameter=field)
    return value


@routes.get("/idps")
async def list_idps(request: web.Request) -> web.Response:
    org = (await caller(request)).require("tokens.admin")
    page = await request.app[PROVIDERS].identity_providers(org, request.query.get("cursor"))
    idps = []
    for idp in page.rows:
        item: dict[str, Any] = {"algs": list(idp.algs), "mapping": idp.mapping}
        if idp.aud:
            item["aud"] = idp.aud
        if idp.iss:
            item["iss"] = idp.iss
        if idp.jwks_url:
            item["jwksUrl"] = idp.jwks_url
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
    idp = IdentityProviderRow(
        org,
        _optional_str(body, "aud"),
        _optional_str(body, "iss"),
        tuple(algs),
        _optional_str(body, "key"),
        _optional_str(body, "jwksUrl"),
        mapping,
    )
    await request.app[PROVIDERS].upsert_identity_provider(idp)
    return web.Response(status=204)


@routes.delete("/idps")
async def delete_idp(request: web.Request) -> web.Response:
    org = (await caller(request)).require("tokens.admin")
    body = await json_body(request)
    only(body, {"aud", "iss"})
    await request.app[PROVIDERS].delete_identity_provider(org, _optional_str(body, "aud"), _optional_str(body, "iss"))
    return web.Response(status=204)


@routes.get("/token-providers")
async def list_token_providers(request: web.Request) -> web.Response:
    org = (await caller(request)).require("tokens.admin")
    page = await request.app[PROVIDERS].token_providers(org, request.query.get("cursor"))
    providers = [{"service": p.service, "keyId": p.key_id, "mapping": p.mapping} for p in page.rows]
    return page_response("tokenProviders", providers, page.cursor)


@routes.post("/token-providers")
async def upsert_token_provider(request: web.Request) -> web.Response:
    org = (await caller(request)).require("tokens.admin")
    body = await json_body(request)
    only(body, {"keyId", "service", "mapping"})
    service = name(body.get("service"), "service")
    await request.app[PROVIDERS].upsert_token_provider(org, service, body.get("keyId"), body.get("mapping"))
    return web.Response(status=204)


@routes.delete("/token-providers/{service}")
async def delete_token_provider(request: web.Request) -> web.Response:
    org = (await caller(request)).require("tokens.admin")
    await request.app[PROVIDERS].delete_token_provider(org, request.match_info["service"])
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
    token = await request.app[PROVIDERS].exchange(subject, audience)
    return ok({"access_token": token, "issued_token_type": ACCESS_TOKEN, "token_type": "Bearer"})
