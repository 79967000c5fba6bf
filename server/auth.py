"""Who is calling: bearer tokens to principals, scopes, orgs and impersonation (wire-api section 2).

Two kinds of bearer token:

- **key-signed** (``kid`` = ``sbk_…``): HS256 with the key's secret, as ``@statebacked/token`` and
  token exchange produce them; the key's org and scopes apply; ``act`` becomes the authContext;
- **statehost admin** (``kid`` = ``statehost-admin``): HS256 with a secret the server keeps in its
  database; ``sub`` is a user, whose role in the org (chosen with ``x-statebacked-org-id`` when the
  user has several) decides the scopes; ``gen`` must equal the user's token generation (revocation).

Anything else, expired, forged or from a deleted key is 403 ``missing-user``. ``x-statebacked-act``
(impersonation) is honoured only for callers with ``org.keys.write`` (org admins).

Revocation (docs/threat-model.md): admin tokens, users and memberships are read from the database
on every request, so a revoked user fails at once on every node. Verified key-signed tokens are
cached per process (the HMAC and the key's row are skipped on a hit): deleting a key drops its
tokens here at its commit and on the other nodes when the commit's notice arrives
(server/revocation.py); every cached token is trusted for at most :data:`VERIFIED_TOKEN_TTL_S`, the
bound when a notice is lost. ``still_authorized`` re-checks a caller verified earlier (the real-time
sockets).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import jwt

from runtime import Clock

from .errors import ApiError, InvalidParameter, MissingUser
from .exchange import KeyRecord, auth_context_of, check_key_token_times, verify_key_token
from .store import Store

__all__ = [
    "ADMIN_AUDIENCE",
    "ADMIN_KID",
    "ALL_SCOPES",
    "USE_PRESETS",
    "Authenticator",
    "Caller",
    "MissingOrg",
    "MissingScope",
    "SpecifyOrg",
    "authenticate",
    "issue_admin_token",
    "scopes_for_role",
    "still_authorized",
]

ADMIN_KID = "statehost-admin"
ADMIN_AUDIENCE = "statehost-admin"
ADMIN_SECRET = "admin-token-key"

ALL_SCOPES = frozenset(
    {
        "events.write",
        "events.read",
        "state.read",
        "instances.read",
        "instances.write",
        "instances.admin",
        "machines.read",
        "machines.write",
        "machines.admin",
        "machine-versions.read",
        "machine-versions.write",
        "analytics.read",
        "org.read",
        "org.write",
        "org.keys.write",
        "org-members.write",
        "logs.read",
        "tokens.admin",
        "indexes.read",
    }
)
USE_PRESETS = {
    "production": ("events.write", "state.read", "instances.write", "indexes.read"),
    "ci": ("machines.read", "machines.write", "machine-versions.read", "machine-versions.write"),
}
_READ = frozenset(s for s in ALL_SCOPES if s.endswith(".read"))
_WRITE = _READ | frozenset(
    s for s in ALL_SCOPES if s.endswith(".write") and s not in ("org.write", "org.keys.write", "org-members.write")
)


def scopes_for_role(role: str) -> frozenset[str]:
    """The statehost choice of wire-api 2.3: read ⊂ write ⊂ admin (everything)."""
    return {"read": _READ, "write": _WRITE, "admin": ALL_SCOPES}.get(role, frozenset())


class MissingOrg(ApiError):
    status, code = 403, "missing-org"


class MissingScope(ApiError):
    status, code = 403, "missing-scope"


class SpecifyOrg(ApiError):
    status, code = 400, "specify-org"


@dataclass(frozen=True)
class Caller:
    """A verified caller. ``org_id`` is None for an admin user who must still pick an org."""

    kind: str  # "key" | "admin"
    org_id: str | None
    scopes: frozenset[str]
    auth_context: Mapping[str, Any]
    user_id: str | None = None
    key_id: str | None = None
    memberships: Mapping[str, str] = field(default_factory=dict)
    generation: int | None = None
    """An admin caller's token generation (``still_authorized`` compares it with the user's)."""

    def require(self, scope: str) -> str:
        """Check a scope and return the org the call acts on."""
        if self.org_id is None:
            if not self.memberships:
                raise MissingOrg("the caller belongs to no org; create one first")
            raise SpecifyOrg("the caller belongs to several orgs: name one with x-statebacked-org-id")
        if scope not in self.scopes:
            raise MissingScope(f"this call needs the {scope} scope")
        return self.org_id


def issue_admin_token(secret: str, user_id: str, generation: int, now_s: int, lifetime_s: int) -> str:
    claims = {
        "sub": user_id,
        "gen": generation,
        "aud": ADMIN_AUDIENCE,
        "iss": "statehost",
        "iat": now_s,
        "exp": now_s + lifetime_s,
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": ADMIN_KID})


async def authenticate(
    store: Store,
    token: str | None,
    *,
    org_header: str | None,
    act_header: str | None,
    now_s: int,
    admin_secret: str,
) -> Caller:
    if not token:
        raise MissingUser("no bearer token")
    hit = store.authority.verified_key_tokens.get(token)
    if hit is not None and hit[2] > time.monotonic():
        # A key-signed token verified within VERIFIED_TOKEN_TTL_S: no header to parse, no key to
        # read, no HMAC, and the same Caller as last time (only its times are checked again).
        caller = _cached_key_caller(store, token, hit, org_header, now_s)
    else:
        caller = await _verified_caller(store, token, org_header, now_s, admin_secret)
    if act_header is None:
        return caller
    try:
        act = json.loads(act_header)
    except (ValueError, RecursionError):
        raise InvalidParameter("x-statebacked-act is not JSON", parameter="x-statebacked-act") from None
    if not isinstance(act, dict):
        raise InvalidParameter("x-statebacked-act must be a JSON object", parameter="x-statebacked-act")
    if "org.keys.write" not in caller.scopes:
        raise MissingScope("acting as another user (x-statebacked-act) needs the org.keys.write scope")
    return dataclasses.replace(caller, auth_context=act)


async def _verified_caller(store: Store, token: str, org_header: str | None, now_s: int, admin_secret: str) -> Caller:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise MissingUser(f"the bearer token is not a JWT: {exc}") from None
    kid = header.get("kid")
    if isinstance(kid, str) and kid.startswith("sbk_"):
        caller = await _key_caller(store, token, kid, org_header, now_s)
    elif kid == ADMIN_KID:
        caller = await _admin_caller(store, token, org_header, admin_secret)
    else:
        raise MissingUser("the bearer token was not issued by this server or one of its keys")
    return caller


class Authenticator:
    """Who a request's bearer token names (the service behind every route's ``caller``)."""

    def __init__(self, store: Store, clock: Clock, admin_secret: str) -> None:
        self._store = store
        self._clock = clock
        self._admin_secret = admin_secret

    async def caller(self, token: str | None, *, org_header: str | None, act_header: str | None) -> Caller:
        return await authenticate(
            self._store,
            token,
            org_header=org_header,
            act_header=act_header,
            now_s=self._clock.now_ms() // 1000,
            admin_secret=self._admin_secret,
        )


VERIFIED_TOKENS_CACHED = 10_000
VERIFIED_TOKEN_TTL_S = 5.0
"""How long a verified key-signed token is trusted without reading its key again: the bound on a
deleted key's tokens being accepted by a node that missed the deletion's notice."""


def _cached_key_caller(store: Store, token: str, hit: Any, org_header: str | None, now_s: int) -> Caller:
    key, claims, _, caller = hit
    store.authority.verified_key_tokens.move_to_end(token)
    check_key_token_times(claims, now_s)  # exp and nbf are checked on every use
    if org_header and org_header != key.org_id:
        raise MissingOrg("the token's key belongs to another org than x-statebacked-org-id")
    return cast(Caller, caller)


async def _key_caller(store: Store, token: str, kid: str, org_header: str | None, now_s: int) -> Caller:
    cache = store.authority.verified_key_tokens
    generation = store.authority.generation
    row = await store.orgs.key(kid)
    if row is None:
        cache.pop(token, None)
        raise MissingUser("the token's key does not exist (deleted?)")
    key = KeyRecord(row.id, row.org_id, row.secret, row.scopes)
    claims = verify_key_token(token, key, now_s)
    caller = Caller("key", key.org_id, frozenset(key.scopes), auth_context_of(claims), key_id=key.id)
    if generation == store.authority.generation:  # no deletion overtook the read
        # (key, claims, trusted until, caller): Store.forget finds a key's tokens by hit[0].id.
        cache[token] = (key, claims, time.monotonic() + VERIFIED_TOKEN_TTL_S, caller)
        cache.move_to_end(token)
        while len(cache) > VERIFIED_TOKENS_CACHED:
            cache.popitem(last=False)
    if org_header and org_header != key.org_id:
        raise MissingOrg("the token's key belongs to another org than x-statebacked-org-id")
    return caller


async def _admin_caller(store: Store, token: str, org_header: str | None, secret: str) -> Caller:
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], audience=ADMIN_AUDIENCE, leeway=5)
    except jwt.PyJWTError as exc:
        raise MissingUser(f"invalid admin token: {exc}") from None
    user = await store.orgs.user(str(claims.get("sub")))
    if user is None or claims.get("gen") != user.token_generation:
        raise MissingUser("the admin token was revoked")
    memberships = await store.orgs.memberships(user.id)
    org_id: str | None = None
    if org_header:
        if org_header not in memberships:
            raise MissingOrg(f"the caller is not a member of {org_header}")
        org_id = org_header
    elif len(memberships) == 1:
        org_id = next(iter(memberships))
    scopes = scopes_for_role(memberships[org_id]) if org_id else frozenset()
    return Caller(
        "admin",
        org_id,
        scopes,
        {"sub": user.id},
        user_id=user.id,
        memberships=memberships,
        generation=user.token_generation,
    )


async def still_authorized(store: Store, caller: Caller) -> bool:
    """Whether the authority a caller was verified with still stands: its key exists, or its user's
    tokens were not revoked and the user keeps a role in the org that grants the caller's scopes.
    (Expiry is not re-checked: a live real-time socket outlives its token, wire-api 4.6.)"""
    if caller.kind == "key":
        row = None if caller.key_id is None else await store.orgs.key(caller.key_id)
        return row is not None and row.org_id == caller.org_id
    user = None if caller.user_id is None else await store.orgs.user(caller.user_id)
    if user is None or user.token_generation != caller.generation:
        return False
    if caller.org_id is None:
        return True
    role = (await store.orgs.memberships(user.id)).get(caller.org_id)
    return role is not None and caller.scopes <= scopes_for_role(role)
