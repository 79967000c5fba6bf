"""Token exchange (``POST /tokens``), the mapping language, and key-signed tokens (wire-api 2.2-2.10).

Key-signed tokens are minted exactly like ``@statebacked/token`` 0.2.0 mints them: HS256, header
``{"alg":"HS256","kid":"sbk_…"}``, payload ``act``, ``aud``, ``exp``, ``iss``, ``iat`` in that order,
HMAC key = the UTF-8 bytes of the whole ``sbsec_…`` secret. Their JSON payload is written with
``>``, ``?``, ``~`` and DEL escaped as ``\\u00XX``: base64 of pure ASCII JSON without those four
characters never contains ``-`` or ``_``, so a browser's ``atob`` can always read ``exp`` (2.10). This
is exact, where a filler claim padded by trial would only be probable.

Token exchange (2.7): the audience ``https://tokens.statebacked.dev/<orgId>/<service>`` is parsed
literally; the subject token is matched to an identity provider (IdP) of that org by ``aud``/``iss``,
verified with the IdP's key or JWKS, mapped through the IdP's and then the token provider's mapping,
and re-signed with the token provider's key. Every failure is 403 ``missing-user``.

Mapping language (2.8): a key ending in ``.$`` takes the value at a JSONPath of the input; other keys
are constants, except objects, which are mapped recursively (arrays are constants, never mapped).
The JSONPath subset (server/jsonpath.py) is ``$``, ``.name``, ``[0]``, ``['name']`` and
``["name"]``; wildcards, slices, filters and recursive descent are refused. Steps follow JavaScript
property access: ``[0]`` on an object reads key ``"0"``, ``.0`` on an array reads index 0. **A path
that matches nothing omits the key** from the output (as JavaScript's ``JSON.stringify`` drops an
``undefined`` value); a JSON ``null`` in the input is a match and is copied.

Choices where the spec is silent:

- subject tokens must carry a numeric ``exp`` (it bounds the issued token's lifetime); ``nbf`` is
  honoured with :data:`LEEWAY_S` of clock skew; ``exp`` has no leeway, so no issued token is born expired;
- when several IdPs match, those configuring both ``aud`` and ``iss`` are tried first; the first one
  that verifies the signature wins (its mapping applies);
- an IdP's static ``key`` is base64url (padding and the standard alphabet tolerated); for HS* it is
  the raw secret; for asymmetric algorithms it is PEM text, DER SPKI, a JWK JSON object or a JWK set;
- an IdP mixing HS* with asymmetric algorithms is refused (algorithm confusion), as are empty keys,
  symmetric (``oct``) keys served from a JWKS URL, and JWKS keys marked ``"use": "enc"``;
- key-signed tokens must carry ``exp`` and an accepted ``aud``; ``iss`` is not constrained;
- the issued exchange token uses the default ``@statebacked/token`` issuer of its key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import functools
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.serialization import load_der_public_key

from client.tokens import AUDIENCE as API_AUDIENCE
from client.tokens import sign_token_at as sign_token
from runtime import FetchError, FetchRequest, Limits, Transport

from . import jsonpath
from .errors import InvalidParameter, MissingUser
from .store_providers import IdentityProviderRow, TokenProviderRow

if TYPE_CHECKING:
    from jwt.types import Options

__all__ = [
    "ANONYMOUS_SERVICE",
    "API_AUDIENCE",
    "EXCHANGE_LIFETIME_S",
    "LEEWAY_S",
    "SUPPORTED_ALGS",
    "TOKENS_AUDIENCE_PREFIX",
    "ExchangeDirectory",
    "IdentityProviderRecord",
    "JwksCache",
    "KeyRecord",
    "MissingUser",
    "TokenProviderRecord",
    "anonymous_idp",
    "anonymous_issuer",
    "anonymous_token_provider",
    "apply_mapping",
    "auth_context_of",
    "exchange",
    "parse_audience",
    "sign_token",
    "validate_identity_provider",
    "validate_mapping",
    "verify_key_token",
]

TOKENS_AUDIENCE_PREFIX = "https://tokens.statebacked.dev/"
ANONYMOUS_SERVICE = "anonymous-statebacked-dev"
EXCHANGE_LIFETIME_S = 24 * 60 * 60
LEEWAY_S = 30
"""Clock skew tolerated on ``exp`` of key-signed tokens and on ``nbf`` everywhere."""
SUPPORTED_ALGS = (
    "HS256", "HS384", "HS512",
    "PS256", "PS384", "PS512",
    "RS256", "RS384", "RS512",
    "ES256", "ES384", "ES512",
    "EdDSA",
)  # fmt: skip
MAX_SUBJECT_TOKEN_CHARS = 64 * 1024
_MAX_MAPPING_DEPTH = 32
_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
# PyJWT >= 2.10 warns about HMAC keys under 32 bytes; older versions never warn.
_KEY_LENGTH_WARNING: type[Warning] = getattr(jwt, "InsecureKeyLengthWarning", UserWarning)


# ---------------------------------------------------------------------------------------------
# Records and the storage interface


@dataclass(frozen=True)
class KeyRecord:
    id: str
    org_id: str
    secret: str
    scopes: tuple[str, ...]


IdentityProviderRecord = IdentityProviderRow
"""An org's identity provider: the directory's row (server/store_providers.py) is the one type."""
TokenProviderRecord = TokenProviderRow
"""An org's token provider: the directory's row (server/store_providers.py) is the one type."""


class ExchangeDirectory(Protocol):
    """What token exchange reads from the store."""

    async def token_provider(self, org_id: str, service: str) -> TokenProviderRecord | None: ...

    async def identity_providers(self, org_id: str) -> list[IdentityProviderRecord]: ...

    async def key(self, key_id: str) -> KeyRecord | None: ...


# ---------------------------------------------------------------------------------------------
# Mapping language (the JSONPath subset lives in server/jsonpath.py)


def _check_mapping(mapping: object, where: str, depth: int) -> None:
    if not isinstance(mapping, Mapping):
        raise InvalidParameter(f"{where} must be a JSON object", parameter="mapping")
    if depth > _MAX_MAPPING_DEPTH:
        raise InvalidParameter(f"{where} nests more than {_MAX_MAPPING_DEPTH} objects", parameter="mapping")
    outputs: set[str] = set()
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise InvalidParameter(f"{where} has a non-string key", parameter="mapping")
        name = key[:-2] if key.endswith(".$") else key
        if key.endswith(".$"):
            if not name:
                raise InvalidParameter(f"{where}: the key {key!r} names no output property", parameter="mapping")
            if not isinstance(value, str):
                raise InvalidParameter(f"{where}.{key} must be a JSONPath string", parameter="mapping")
            try:
                jsonpath.parse(value)
            except ValueError as exc:
                raise InvalidParameter(f"{where}.{key}: invalid JSONPath {value}: {exc}", parameter="mapping") from None
        elif isinstance(value, Mapping):
            _check_mapping(value, f"{where}.{key}", depth + 1)
        if name in outputs:
            raise InvalidParameter(f"{where} sets {name!r} twice", parameter="mapping")
        outputs.add(name)


def validate_mapping(mapping: object) -> None:
    """Raise InvalidParameter (``parameter="mapping"``) unless ``mapping`` is a valid mapping.

    Besides bad JSONPaths this refuses non-object mappings, ``.$`` keys whose value is not a string
    or whose name is empty, two keys producing the same property (``"a"`` and ``"a.$"``) and
    nesting deeper than 32 objects.
    """
    _check_mapping(mapping, "mapping", 0)


def apply_mapping(mapping: Mapping[str, Any], claims: Mapping[str, Any]) -> dict[str, Any]:
    """Map ``claims`` through ``mapping`` (wire-api 2.8). Unmatched paths omit their key."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if key.endswith(".$"):
            if not isinstance(value, str):
                raise InvalidParameter(f"mapping key {key!r} must have a JSONPath string", parameter="mapping")
            try:
                steps = jsonpath.parse(value)
            except ValueError as exc:
                raise InvalidParameter(f"invalid JSONPath {value} at {key!r}: {exc}", parameter="mapping") from None
            found = jsonpath.select(claims, steps)
            if found is not jsonpath.MISSING:
                out[key[:-2]] = copy.deepcopy(found)
        elif isinstance(value, Mapping):
            out[key] = apply_mapping(value, claims)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------------
# Key-signed tokens


@contextmanager
def _quiet_key_length() -> Iterator[None]:
    """Silence PyJWT's short-HMAC-key warning: the anonymous IdP's key is the 26-byte org ID."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _KEY_LENGTH_WARNING)
        yield


def _check_times(claims: Mapping[str, Any], now_s: float, *, exp_leeway_s: float, nbf_leeway_s: float) -> float:
    """Raise MissingUser unless the token is current; return its ``exp``."""
    exp = _number(claims.get("exp"))
    if exp is None:
        raise MissingUser("the token has no numeric exp claim")
    if exp <= now_s - exp_leeway_s:
        raise MissingUser("the token has expired")
    if "nbf" in claims:
        nbf = _number(claims["nbf"])
        if nbf is None:
            raise MissingUser("the token's nbf claim is not a number")
        if nbf > now_s + nbf_leeway_s:
            raise MissingUser("the token is not valid yet (nbf)")
    return exp


def _number(value: object) -> float | None:
    """``value`` if it is a finite JSON number (not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


_NO_CLAIM_CHECKS: Options = {
    "verify_aud": False,
    "verify_iss": False,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_sub": False,
    "verify_jti": False,
}


def verify_key_token(
    token: str, key: KeyRecord, now_s: float, *, audience: str | None = None, leeway_s: float = LEEWAY_S
) -> dict[str, Any]:
    """The claims of a token signed with ``key`` (HS256), or MissingUser.

    ``aud`` must be ``https://api.statebacked.dev/`` or ``audience``; ``exp`` is required and, like
    ``nbf``, checked against ``now_s`` with ``leeway_s``; ``iss`` is not constrained.
    """
    audiences = [API_AUDIENCE] if audience is None else [API_AUDIENCE, audience]
    options: Options = {**_NO_CLAIM_CHECKS, "verify_aud": True, "require": ["aud", "exp"]}
    try:
        header = jwt.get_unverified_header(token)
        with _quiet_key_length():
            claims = jwt.decode(token, key.secret.encode(), algorithms=["HS256"], audience=audiences, options=options)
    except jwt.PyJWTError as exc:
        raise MissingUser(f"invalid token: {exc}") from None
    if header.get("kid") != key.id:
        raise MissingUser("the token's kid does not name its key")
    check_key_token_times(claims, now_s, leeway_s)
    return claims


def check_key_token_times(claims: Mapping[str, Any], now_s: float, leeway_s: float = LEEWAY_S) -> None:
    """A key-signed token's exp and nbf against ``now_s`` (also for a token verified earlier)."""
    _check_times(claims, now_s, exp_leeway_s=leeway_s, nbf_leeway_s=leeway_s)


def auth_context_of(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The authContext of a key-signed token: ``act``, with the top-level ``sub`` as a fallback (2.4)."""
    act = claims.get("act")
    context = dict(act) if isinstance(act, Mapping) else {}
    if "sub" not in context and "sub" in claims:
        context["sub"] = claims["sub"]
    return context


# ---------------------------------------------------------------------------------------------
# Anonymous sessions


def anonymous_issuer(org_id: str) -> str:
    return f"https://{org_id}.anonymous.auth.statebacked.dev"


def anonymous_idp(org_id: str) -> IdentityProviderRecord:
    """The IdP that ``POST /orgs`` provisions for anonymous sessions (2.9)."""
    issuer = anonymous_issuer(org_id)
    return IdentityProviderRecord(
        org_id=org_id,
        aud=issuer,
        iss=issuer,
        algs=("HS256",),
        key=base64.urlsafe_b64encode(org_id.encode()).rstrip(b"=").decode(),
        jwks_url=None,
        mapping={"sid.$": "$.sid", "did.$": "$.did"},
    )


def anonymous_token_provider(org_id: str, key_id: str) -> TokenProviderRecord:
    """The ``anonymous-statebacked-dev`` token provider, signing with ``key_id`` (2.9)."""
    return TokenProviderRecord(
        org_id=org_id,
        service=ANONYMOUS_SERVICE,
        key_id=key_id,
        mapping={"sid.$": "$.sid", "did.$": "$.did", "auth": "anonymous"},
    )


# ---------------------------------------------------------------------------------------------
# Identity-provider keys


def _b64url_decode(text: str) -> bytes:
    cleaned = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    try:
        return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("the key is not base64url") from None


def _is_hmac(alg: str) -> bool:
    return alg.startswith("HS")


def _jwk_for(data: Mapping[str, Any], alg: str) -> jwt.PyJWK | None:
    """``data`` as a key for ``alg``, or None when it is not one (wrong type, curve, use or alg)."""
    if data.get("use") not in (None, "sig"):
        return None
    declared = data.get("alg")
    if declared is not None and declared != alg:
        return None
    try:
        return jwt.PyJWK(dict(data), algorithm=alg)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None


@functools.lru_cache(maxsize=256)
def _static_keys(key: str, alg: str, kid: str | None) -> tuple[Any, ...]:
    """Verification keys for ``alg`` from an IdP's uploaded ``key``; ValueError if it is unusable."""
    raw = _b64url_decode(key)
    if not raw:
        raise ValueError("the key is empty")
    if _is_hmac(alg):
        return (raw,)
    text = raw.strip()
    if text.startswith(b"{"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise ValueError("the key looks like a JWK but is not JSON") from None
        if not isinstance(data, dict):
            raise ValueError("the key is not a JWK object")
        listed = data.get("keys") if "keys" in data else [data]
        if not isinstance(listed, list):
            raise ValueError("the key's JWK set has no keys list")
        candidates = [j for j in listed if isinstance(j, dict) and (kid is None or j.get("kid") in (None, kid))]
        keys = tuple(k.key for k in (_jwk_for(j, alg) for j in candidates) if k is not None)
        if not keys:
            raise ValueError(f"the key holds no JWK usable with {alg}")
        return keys
    algorithm = jwt.get_algorithm_by_name(alg)
    material: Any = text
    if not text.startswith((b"-----BEGIN", b"ssh-")):
        try:
            material = load_der_public_key(raw)
        except ValueError:
            raise ValueError("the key is neither PEM, DER SPKI nor a JWK") from None
    try:
        return (algorithm.prepare_key(material),)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise ValueError(f"the key cannot be used with {alg}: {exc}") from None


def validate_identity_provider(idp: IdentityProviderRecord) -> None:
    """Raise InvalidParameter unless ``idp`` can be stored (``POST /idps``, wire-api 3.11)."""
    if not (idp.aud or idp.iss):
        raise InvalidParameter("an identity provider needs aud, iss or both", parameter="aud")
    if not idp.algs:
        raise InvalidParameter("algs must list at least one algorithm", parameter="algs")
    for alg in idp.algs:
        if alg not in SUPPORTED_ALGS:
            raise InvalidParameter(f"unsupported algorithm {alg!r}", parameter="algs")
    if len({_is_hmac(a) for a in idp.algs}) > 1:
        raise InvalidParameter("algs cannot mix HS* with asymmetric algorithms", parameter="algs")
    if (idp.key is None) == (idp.jwks_url is None):
        raise InvalidParameter("give exactly one of key and jwksUrl", parameter="key")
    if idp.key is not None:
        for alg in idp.algs:
            try:
                _static_keys(idp.key, alg, None)
            except ValueError as exc:
                raise InvalidParameter(f"{exc} ({alg})", parameter="key") from None
    elif idp.jwks_url is not None and not _absolute_http_url(idp.jwks_url):
        raise InvalidParameter("jwksUrl must be an absolute http(s) URL", parameter="jwksUrl")
    validate_mapping(idp.mapping)


def _absolute_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# ---------------------------------------------------------------------------------------------
# JWKS


@dataclass(frozen=True)
class _KeySet:
    jwks: tuple[dict[str, Any], ...]
    fetched_at: float | None
    """When ``jwks`` was downloaded (None: never)."""
    attempted_at: float
    error: str | None
    """Why the last download failed, if it did (``jwks`` then holds the previous set, if fresh enough)."""
    built: dict[tuple[int, str], jwt.PyJWK | None] = field(default_factory=dict)


class JwksCache:
    """JSON Web Key Sets of identity providers, fetched through ``transport`` (its SSRF rules apply).

    A set is kept ``ttl_s``; a token naming an unknown ``kid`` triggers a refetch at most every
    ``unknown_kid_refetch_s``; a failed download is retried after ``failure_retry_s`` while the
    previous set stays in use for up to ``max_stale_s``. Bodies over ``max_bytes`` and downloads over
    ``timeout_s`` fail. ``clock`` returns seconds.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        ttl_s: float = 600.0,
        unknown_kid_refetch_s: float = 60.0,
        failure_retry_s: float = 10.0,
        max_stale_s: float = 3600.0,
        max_bytes: int = 1024 * 1024,
        timeout_s: float = 10.0,
        max_keys: int = 100,
        max_urls: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._ttl_s = ttl_s
        self._unknown_kid_refetch_s = unknown_kid_refetch_s
        self._failure_retry_s = failure_retry_s
        self._max_stale_s = max_stale_s
        self._limits = Limits(max_fetch_response_bytes=max_bytes)
        self._timeout_s = timeout_s
        self._max_keys = max_keys
        self._max_urls = max_urls
        self._clock = clock
        self._sets: dict[str, _KeySet] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.downloads = 0
        """Download attempts so far (for tests and metrics)."""

    async def keys(self, url: str, *, kid: str | None, alg: str) -> list[jwt.PyJWK]:
        """The keys of ``url`` usable with ``alg`` (only those with ``kid`` when given).

        MissingUser when the set cannot be downloaded and no earlier copy is at hand.
        """
        current = self._sets.get(url)
        if current is None or self._due(current):
            current = await self._refresh(url, current)
        if (
            kid is not None
            and not any(j.get("kid") == kid for j in current.jwks)
            and self._clock() - current.attempted_at >= self._unknown_kid_refetch_s
        ):
            current = await self._refresh(url, current)
        if current.error is not None and not current.jwks:
            raise MissingUser(f"cannot load the identity provider's keys from {url}: {current.error}")
        found: list[jwt.PyJWK] = []
        for index, data in enumerate(current.jwks):
            if kid is not None and data.get("kid") != kid:
                continue
            if (index, alg) not in current.built:
                current.built[(index, alg)] = _jwk_for(data, alg)
            built = current.built[(index, alg)]
            if built is not None:
                found.append(built)
        return found

    def _due(self, current: _KeySet) -> bool:
        wait = self._failure_retry_s if current.error is not None else self._ttl_s
        return self._clock() - current.attempted_at >= wait

    async def _refresh(self, url: str, previous: _KeySet | None) -> _KeySet:
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            latest = self._sets.get(url)
            if latest is not None and latest is not previous:
                return latest  # refreshed by another task while this one waited
            self.downloads += 1
            try:
                jwks = await self._download(url)
            except _JwksFailure as exc:
                now = self._clock()
                keep = (
                    previous is not None
                    and previous.fetched_at is not None
                    and now - previous.fetched_at < self._max_stale_s
                )
                if keep and previous is not None:
                    entry = _KeySet(previous.jwks, previous.fetched_at, now, str(exc), previous.built)
                else:
                    entry = _KeySet((), None, now, str(exc))
            else:
                now = self._clock()
                entry = _KeySet(jwks, now, now, None)
            if url not in self._sets and len(self._sets) >= self._max_urls:
                oldest = next(iter(self._sets))
                del self._sets[oldest]
                if oldest in self._locks and not self._locks[oldest].locked():
                    del self._locks[oldest]
            self._sets[url] = entry
            return entry

    async def _download(self, url: str) -> tuple[dict[str, Any], ...]:
        request = FetchRequest(id=0, url=url, method="GET", headers=(("accept", "application/json"),), body=None)
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._transport.fetch(request, self._limits)
        except FetchError as exc:
            raise _JwksFailure(str(exc)) from None
        except TimeoutError:
            raise _JwksFailure(f"timed out after {self._timeout_s} s") from None
        if response.status != 200:
            raise _JwksFailure(f"HTTP status {response.status}")
        try:
            document = json.loads(response.body)
        except ValueError:
            raise _JwksFailure("the response is not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise _JwksFailure('the response is not a JWK set (no "keys" list)')
        keys = [k for k in document["keys"] if isinstance(k, dict) and k.get("kty") not in (None, "oct")]
        return tuple(keys[: self._max_keys])


class _JwksFailure(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Token exchange


def parse_audience(audience: str) -> tuple[str, str]:
    """``https://tokens.statebacked.dev/<orgId>/<service>`` → (org ID, service), or MissingUser."""
    if audience.startswith(TOKENS_AUDIENCE_PREFIX):
        parts = audience[len(TOKENS_AUDIENCE_PREFIX) :].split("/")
        if len(parts) == 2 and all(_NAME.fullmatch(p) for p in parts):
            return parts[0], parts[1]
    raise MissingUser(f"the audience must be {TOKENS_AUDIENCE_PREFIX}<orgId>/<tokenProviderService>")


def _candidates(idps: Sequence[IdentityProviderRecord], claims: Mapping[str, Any]) -> list[IdentityProviderRecord]:
    """The IdPs whose configured aud and/or iss match the claims, the most specific first."""
    aud_claim = claims.get("aud")
    audiences = [aud_claim] if isinstance(aud_claim, str) else aud_claim if isinstance(aud_claim, list) else []
    issuer = claims.get("iss")
    scored: list[tuple[int, IdentityProviderRecord]] = []
    for idp in idps:
        aud, iss = idp.aud or None, idp.iss or None
        if aud is None and iss is None:
            continue
        if aud is not None and aud not in audiences:
            continue
        if iss is not None and iss != issuer:
            continue
        scored.append(((aud is not None) + (iss is not None), idp))
    scored.sort(key=lambda pair: -pair[0])
    return [idp for _, idp in scored]


async def _verify(
    token: str, idp: IdentityProviderRecord, alg: str, kid: str | None, jwks: JwksCache
) -> dict[str, Any]:
    if alg not in idp.algs or alg not in SUPPORTED_ALGS:
        raise MissingUser(f"the identity provider does not allow {alg}")
    if len({_is_hmac(a) for a in idp.algs}) > 1:
        raise MissingUser("the identity provider mixes HS* and asymmetric algorithms")
    keys: Sequence[Any]
    if idp.key is not None:
        try:
            keys = _static_keys(idp.key, alg, kid)
        except ValueError as exc:
            raise MissingUser(f"the identity provider's key is unusable: {exc}") from None
    elif idp.jwks_url is not None:
        keys = [k.key for k in await jwks.keys(idp.jwks_url, kid=kid, alg=alg)]
    else:
        keys = ()
    if not keys:
        raise MissingUser(f"the identity provider has no {alg} key" + (f" with kid {kid!r}" if kid else ""))
    failure = "invalid signature"
    for key in keys:
        try:
            with _quiet_key_length():
                return jwt.decode(token, key, algorithms=[alg], options=_NO_CLAIM_CHECKS)
        except jwt.PyJWTError as exc:
            failure = str(exc) or type(exc).__name__
    raise MissingUser(f"the subject token's signature does not verify: {failure}")


async def exchange(
    directory: ExchangeDirectory, *, subject_token: str, audience: str, now_s: int, jwks: JwksCache
) -> str:
    """Exchange an identity-provider token for a key-signed access token (wire-api 2.7)."""
    org_id, service = parse_audience(audience)
    provider = await directory.token_provider(org_id, service)
    if provider is None:
        raise MissingUser(f"no token provider {service!r} in org {org_id}")
    if len(subject_token) > MAX_SUBJECT_TOKEN_CHARS:
        raise MissingUser("the subject token is too long")
    try:
        header = jwt.get_unverified_header(subject_token)
        unverified = jwt.decode(subject_token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise MissingUser(f"the subject token is not a JWT: {exc}") from None
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str):
        raise MissingUser("the subject token names no algorithm")
    candidates = _candidates(await directory.identity_providers(org_id), unverified)
    if not candidates:
        raise MissingUser("no identity provider of the org matches the subject token's aud and iss")
    failures: list[str] = []
    for idp in candidates:
        try:
            claims = await _verify(subject_token, idp, alg, kid if isinstance(kid, str) else None, jwks)
        except MissingUser as exc:
            failures.append(exc.message)
            continue
        break
    else:
        raise MissingUser("; ".join(dict.fromkeys(failures)))
    expires = _check_times(claims, now_s, exp_leeway_s=0, nbf_leeway_s=LEEWAY_S)
    final = apply_mapping(provider.mapping, apply_mapping(idp.mapping, claims))
    key = await directory.key(provider.key_id)
    if key is None or key.org_id != org_id:
        raise MissingUser(f"the token provider's key {provider.key_id} no longer exists")
    try:
        return sign_token(
            key.id,
            key.secret,
            final,
            expires_at_s=min(math.floor(expires), now_s + EXCHANGE_LIFETIME_S),
            issued_at_s=now_s,
        )
    except ValueError as exc:
        raise MissingUser(f"the mapped claims are not JSON: {exc}") from None
