"""Orgs, billing, keys and org members (wire-api 3.2-3.4, 3.14-3.15)."""

from __future__ import annotations

from aiohttp import web

from ..auth import ALL_SCOPES, USE_PRESETS
from ..errors import InvalidParameter, MissingUser, NotFound
from .common import ORGS, SETTINGS, caller, iso, json_body, ok, only, page_response

routes = web.RouteTableDef()

LIMITS = {"monthlyEventsLimit": 2**31 - 1, "monthlyReadsLimit": 2**31 - 1}


def _admin_user(found) -> str:  # type: ignore[no-untyped-def]
    if found.user_id is None:
        raise MissingUser("this call needs an admin user's token, not a key-signed token")
    return str(found.user_id)


@routes.get("/orgs")
async def list_orgs(request: web.Request) -> web.Response:
    found = await caller(request)
    if found.kind == "key":
        found.require("org.read")
    user = _admin_user(found)
    page = await request.app[ORGS].orgs_of(user, request.query.get("cursor"))
    orgs = [
        {"id": o.id, "name": o.name, "role": o.role, "createdAt": iso(o.created_ms), "limits": {**LIMITS, **o.limits}}
        for o in page.rows
    ]
    return page_response("orgs", orgs, page.cursor)


@routes.post("/orgs")
async def create_org_route(request: web.Request) -> web.Response:
    user = _admin_user(await caller(request))
    body = await json_body(request)
    only(body, {"name", "allowAnonymousAccess"})
    org_name = body.get("name")
    if not isinstance(org_name, str) or not org_name.strip() or len(org_name) > 200:
        raise InvalidParameter("name must be a non-empty string", parameter="name")
    allow_anonymous = body.get("allowAnonymousAccess", True)
    if not isinstance(allow_anonymous, bool):
        raise InvalidParameter("allowAnonymousAccess must be a boolean", parameter="allowAnonymousAccess")
    org_id = await request.app[ORGS].create_org(org_name, user, allow_anonymous=allow_anonymous)
    return ok({"id": org_id})


@routes.get("/billing")
async def billing(request: web.Request) -> web.Response:
    (await caller(request)).require("org.write")
    url = request.app[SETTINGS].billing_url
    if not url:
        raise NotFound("this server has no billing portal (setting billing_url)")
    return ok({"url": url})


@routes.get("/keys")
async def list_keys(request: web.Request) -> web.Response:
    org = (await caller(request)).require("tokens.admin")
    page = await request.app[ORGS].keys(org, request.query.get("cursor"))
    keys = [{"id": k.id, "name": k.name, "scopes": list(k.scopes), "createdAt": iso(k.created_ms)} for k in page.rows]
    return page_response("keys", keys, page.cursor)


@routes.post("/keys")
async def create_key(request: web.Request) -> web.Response:
    found = await caller(request)
    org = found.require("org.keys.write")
    body = await json_body(request)
    only(body, {"name", "scopes", "use"})
    key_name = body.get("name")
    if not isinstance(key_name, str) or not key_name.strip():
        raise InvalidParameter("name must be a non-empty string", parameter="name")
    scopes = body.get("scopes")
    use = body.get("use")
    if scopes is not None:  # explicit scopes win over use (smply always sends use)
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            raise InvalidParameter("scopes must be a non-empty list of scope names", parameter="scopes")
        unknown = sorted(set(scopes) - ALL_SCOPES)
        if unknown:
            raise InvalidParameter(f"unknown scope {unknown[0]!r}", parameter="scopes")
        granted = tuple(dict.fromkeys(scopes))
    elif isinstance(use, str) and use in USE_PRESETS:
        granted = USE_PRESETS[use]
    else:
        raise InvalidParameter("give scopes, or use: production | ci", parameter="use")
    key = await request.app[ORGS].create_key(org, key_name, granted, found.user_id)
    return ok({"id": key.id, "key": key.secret})


@routes.delete("/keys/{key_id}")
async def delete_key(request: web.Request) -> web.Response:
    org = (await caller(request)).require("org.keys.write")
    await request.app[ORGS].delete_key(org, request.match_info["key_id"])
    return web.Response(status=204)


@routes.post("/org-members")
async def invite(request: web.Request) -> web.Response:
    found = await caller(request)
    org = found.require("org-members.write")
    body = await json_body(request)
    only(body, {"email", "role"})
    email, role = body.get("email"), body.get("role")
    if not isinstance(email, str) or "@" not in email:
        raise InvalidParameter("email must be an e-mail address", parameter="email")
    if role not in ("admin", "write", "read"):
        raise InvalidParameter("role must be admin, write or read", parameter="role")
    code = await request.app[ORGS].invite(org, email, role, found.user_id)
    return ok({"code": code})


async def accept_invitation(request: web.Request) -> web.Response:
    """PUT /invitations/{code}, and PUT /{code} as smply sends it (wire-api 3.15)."""
    user = _admin_user(await caller(request))
    org = await request.app[ORGS].accept_invitation(request.match_info["code"], user)
    return ok({"orgId": org})
