"""Token exchange, the mapping language and key-signed tokens (server/exchange.py, wire-api 2.2-2.10)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from runtime import FetchPolicy
from server.errors import InvalidParameter, MissingUser
from server.exchange import (
    ANONYMOUS_SERVICE,
    IdentityProviderRecord,
    JwksCache,
    KeyRecord,
    TokenProviderRecord,
    anonymous_idp,
    anonymous_token_provider,
    apply_mapping,
    auth_context_of,
    exchange,
    parse_audience,
    sign_token,
    validate_identity_provider,
    validate_mapping,
    verify_key_token,
)
from server.fetch import AiohttpTransport

ORG = "org_uHvZHpF4STWvMg8BKVCUTg"
OTHER_ORG = "org_AAAAAAAAAAAAAAAAAAAAAA"
KEY_ID = "sbk_nXzdtCxESemgtxS5JX-LrA"
SECRET = "sbsec_r8Qm1vS3ZtE0kqJ6yWbN4cXpUoL2hDfG9aT7iVsK5eY"
KEY = KeyRecord(KEY_ID, ORG, SECRET, ("events.write", "state.read", "instances.write", "indexes.read"))
NOW = 1_795_848_800

# Produced by the official @statebacked/token 0.2.0 (npm, with jose 4.15.9) in a scratch directory:
#   mkdir /tmp/sbtoken && cd /tmp/sbtoken && npm init -y && npm install @statebacked/token@0.2.0
#   node -e 'require("@statebacked/token").signToken(
#       { stateBackedKeyId: "sbk_nXzdtCxESemgtxS5JX-LrA",
#         stateBackedSecretKey: "sbsec_r8Qm1vS3ZtE0kqJ6yWbN4cXpUoL2hDfG9aT7iVsK5eY" },
#       { sub: "user-1", role: "admin", teams: ["a", "b"] },
#       { expires: { at: 4102444800 } }).then(console.log)'
OFFICIAL_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsImtpZCI6InNia19uWHpkdEN4RVNlbWd0eFM1SlgtTHJBIn0"
    ".eyJhY3QiOnsic3ViIjoidXNlci0xIiwicm9sZSI6ImFkbWluIiwidGVhbXMiOlsiYSIsImIiXX0sImF1ZCI6Imh0dHBzOi8vYXBpLnN0YXRlYmFja2VkLmRldi8iLCJleHAiOjQxMDI0NDQ4MDAsImlzcyI6Imh0dHBzOi8vc2JrX25YemR0Q3hFU2VtZ3R4UzVKWC1MckEuY2xpZW50LnN0YXRlYmFja2VkLmRldi8iLCJpYXQiOjE3OTU4NDg0NTN9"
    ".0xH5LeKiS-JByPcsX-vq3KrE8Pl2Mj6pJwvivcyoxZY"
)
OFFICIAL_IAT = 1_795_848_453

# The identity-provider token the official @statebacked/client 0.1.37 signs for an anonymous session,
# captured from its POST /tokens body with a recording fetch (same scratch directory, plus
# `npm install @statebacked/client@0.1.37`):
#   new StateBackedClient({ anonymous: { orgId: "org_uHvZHpF4STWvMg8BKVCUTg", getSessionId: () => "sess-1" } },
#                         { apiHost: "http://127.0.0.1:9", fetch: recordingFetch })
# Its iat is 1795848712 and exp = iat + 86400, so tests exchange it with now_s inside that window.
OFFICIAL_ANONYMOUS_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJhdWQiOiJodHRwczovL29yZ191SHZaSHBGNFNUV3ZNZzhCS1ZDVVRnLmFub255bW91cy5hdXRoLnN0YXRlYmFja2VkLmRldiIsImlzcyI6Imh0dHBzOi8vb3JnX3VIdlpIcEY0U1RXdk1nOEJLVkNVVGcuYW5vbnltb3VzLmF1dGguc3RhdGViYWNrZWQuZGV2IiwiaWF0IjoxNzk1ODQ4NzEyLCJleHAiOjE3OTU5MzUxMTIsInNpZCI6InNlc3MtMSIsImRpZCI6InNlc3MtMSJ9"
    ".zOfeRNlQoBysdi5Ajn5uFxgm5zCjJ9xr8wIlRgEBlno"
)
OFFICIAL_ANONYMOUS_IAT = 1_795_848_712


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: object) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def segment_json(token: str, index: int) -> dict:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def browser_atob_exp(token: str) -> int:
    """What @statebacked/client does: JSON.parse(atob(payload)).exp; atob rejects - and _."""
    part = token.split(".")[1]
    return json.loads(base64.b64decode(part + "=" * (-len(part) % 4), validate=True))["exp"]


def hs256(claims: dict, key: bytes, header: dict | None = None) -> str:
    """An HS256 JWT signed by hand, byte for byte as the official anonymous client signs it."""
    data = f"{b64url_json(header or {'alg': 'HS256', 'typ': 'JWT'})}.{b64url_json(claims)}"
    return f"{data}.{b64url(hmac.new(key, data.encode(), hashlib.sha256).digest())}"


class MemoryDirectory:
    """In-memory stand-in for the store's ExchangeDirectory methods."""

    def __init__(self) -> None:
        self.providers: dict[tuple[str, str], TokenProviderRecord] = {}
        self.idps: list[IdentityProviderRecord] = []
        self.keys: dict[str, KeyRecord] = {KEY_ID: KEY}

    def add_provider(self, provider: TokenProviderRecord) -> None:
        self.providers[(provider.org_id, provider.service)] = provider

    def add_idp(self, idp: IdentityProviderRecord) -> None:
        validate_identity_provider(idp)
        self.idps.append(idp)

    async def token_provider(self, org_id: str, service: str) -> TokenProviderRecord | None:
        return self.providers.get((org_id, service))

    async def identity_providers(self, org_id: str) -> list[IdentityProviderRecord]:
        return [idp for idp in self.idps if idp.org_id == org_id]

    async def key(self, key_id: str) -> KeyRecord | None:
        return self.keys.get(key_id)


def audience(service: str, org: str = ORG) -> str:
    return f"https://tokens.statebacked.dev/{org}/{service}"


# ---------------------------------------------------------------------------------------------
# Mapping language


def test_mapping_spec_illustration():
    mapping = {"sub.$": "$.sub", "plan": "free", "org": {"id.$": "$.org_id"}}
    assert apply_mapping(mapping, {"sub": "u1", "org_id": "o9"}) == {"sub": "u1", "plan": "free", "org": {"id": "o9"}}


def test_mapping_paths():
    claims = {
        "sub": "u1",
        "role": {"id": "r1", "names": ["x", "y"]},
        "groups": ["g0", {"name": "g1"}],
        "https://example.com/roles": ["admin"],
        "a b": 1,
        "cognito:groups": ["c"],
        "nothing": None,
        "obj": {"0": "zero"},
    }
    mapping = {
        "all.$": "$",
        "role.$": "$.role.id",
        "second.$": "$.role.names[1]",
        "g1.$": "$.groups[1].name",
        "g0.$": "$.groups.0",
        "roles.$": "$['https://example.com/roles']",
        "first_role.$": '$["https://example.com/roles"][0]',
        "spaced.$": "$['a b']",
        "cognito.$": "$.cognito:groups",
        "none.$": "$.nothing",
        "zero.$": "$.obj[0]",
        "list": [{"x.$": "$.sub"}],
    }
    out = apply_mapping(mapping, claims)
    assert out == {
        "all": claims,
        "role": "r1",
        "second": "y",
        "g1": "g1",
        "g0": "g0",
        "roles": ["admin"],
        "first_role": "admin",
        "spaced": 1,
        "cognito": ["c"],
        "none": None,
        "zero": "zero",
        "list": [{"x.$": "$.sub"}],  # arrays are constants, never mapped
    }
    out["role"] = "changed"
    out["all"]["role"]["id"] = "changed"
    assert claims["role"]["id"] == "r1"  # the output never aliases the input


def test_mapping_missing_paths_omit_the_key():
    mapping = {
        "a.$": "$.missing",
        "b.$": "$.sub.deeper",
        "c.$": "$.list[5]",
        "d.$": "$.list.x",
        "keep": {"e.$": "$.no"},
    }
    assert apply_mapping(mapping, {"sub": "u1", "list": [1]}) == {"keep": {}}


def test_mapping_quoted_escapes():
    assert apply_mapping({"v.$": r"$['it\'s']"}, {"it's": 1}) == {"v": 1}
    assert apply_mapping({"v.$": r'$["a\"b"]'}, {'a"b': 2}) == {"v": 2}


@pytest.mark.parametrize(
    "path",
    [
        "sub",
        "$..sub",
        "$.*",
        "$.a[*]",
        "$[?(@.a)]",
        "$.a[-1]",
        "$.a[1:2]",
        "$.",
        "$a",
        "$['unterminated]",
        "$[1",
        "$['a\\x']",
    ],
)
def test_mapping_invalid_paths(path):
    with pytest.raises(InvalidParameter, match="JSONPath") as caught:
        apply_mapping({"x.$": path}, {"sub": "u1"})
    assert path in caught.value.message
    assert caught.value.parameter == "mapping"
    with pytest.raises(InvalidParameter, match="JSONPath"):
        validate_mapping({"nested": {"x.$": path}})


def test_validate_mapping_shapes():
    validate_mapping({"sub.$": "$.sub", "plan": "free", "org": {"id.$": "$.org_id"}, "n": 1, "l": [1]})
    for bad in (
        [],
        "x",
        {"x.$": 5},
        {".$": "$.a"},
        {"a": "b", "a.$": "$.a"},
        {"o": {"x.$": None}},
    ):
        with pytest.raises(InvalidParameter) as caught:
            validate_mapping(bad)
        assert caught.value.parameter == "mapping"
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(InvalidParameter, match="nests"):
        validate_mapping(deep)


# ---------------------------------------------------------------------------------------------
# Audience


def test_parse_audience():
    assert parse_audience(audience("my-service")) == (ORG, "my-service")
    for bad in (
        "https://tokens.statebacked.dev/org_x",
        "https://tokens.statebacked.dev/org_x/svc/extra",
        "https://tokens.statebacked.dev/org_x/svc/",
        "https://tokens.statebacked.dev/org_x/sv c",
        "https://tokens.statebacked.dev//svc",
        "http://tokens.statebacked.dev/org_x/svc",
        "https://localhost:8080/org_x/svc",
        "https://tokens.statebacked.dev.evil/org_x/svc",
        "",
    ):
        with pytest.raises(MissingUser) as caught:
            parse_audience(bad)
        assert caught.value.status == 403 and caught.value.code == "missing-user"


# ---------------------------------------------------------------------------------------------
# Key-signed tokens


def test_sign_token_shape():
    token = sign_token(KEY_ID, SECRET, {"sub": "u1"}, expires_at_s=NOW + 60, issued_at_s=NOW)
    assert segment_json(token, 0) == {"alg": "HS256", "kid": KEY_ID}
    payload = segment_json(token, 1)
    assert list(payload) == ["act", "aud", "exp", "iss", "iat"]
    assert payload == {
        "act": {"sub": "u1"},
        "aud": "https://api.statebacked.dev/",
        "exp": NOW + 60,
        "iss": f"https://{KEY_ID}.client.statebacked.dev/",
        "iat": NOW,
    }
    decoded = jwt.decode(
        token,
        SECRET.encode(),
        algorithms=["HS256"],
        audience="https://api.statebacked.dev/",
        options={"verify_exp": False},
    )
    assert decoded == payload
    custom = sign_token(KEY_ID, SECRET, {}, expires_at_s=1, issued_at_s=0, issuer="https://me/", audience="aud-x")
    assert segment_json(custom, 1) == {"act": {}, "aud": "aud-x", "exp": 1, "iss": "https://me/", "iat": 0}


@pytest.mark.parametrize(
    "act",
    [
        {"sub": "???~~~>>>"},
        {"q": "a?b>c~d\x7fe", "u": "ünïcødé ✓ 🎉", "n": [1.5, -2, True, None]},
        {"url": "https://x.example/?a=1&b=>2", "k?": {"~": "?"}},
        *({"sub": "?" * n + "~" * (n % 3)} for n in range(1, 7)),
    ],
)
def test_sign_token_payload_is_atob_safe(act):
    token = sign_token(KEY_ID, SECRET, act, expires_at_s=NOW + 60, issued_at_s=NOW, issuer="https://i/?x=>~")
    payload_segment = token.split(".")[1]
    assert "-" not in payload_segment and "_" not in payload_segment
    assert browser_atob_exp(token) == NOW + 60
    assert verify_key_token(token, KEY, NOW)["act"] == act


def test_sign_token_rejects_non_json():
    with pytest.raises(ValueError, match=r"(?i)out of range|nan"):
        sign_token(KEY_ID, SECRET, {"x": float("nan")}, expires_at_s=1, issued_at_s=0)


def test_official_token_verifies():
    now = int(time.time())
    claims = verify_key_token(OFFICIAL_TOKEN, KEY, now)
    assert claims == {
        "act": {"sub": "user-1", "role": "admin", "teams": ["a", "b"]},
        "aud": "https://api.statebacked.dev/",
        "exp": 4102444800,
        "iss": f"https://{KEY_ID}.client.statebacked.dev/",
        "iat": OFFICIAL_IAT,
    }
    assert auth_context_of(claims) == {"sub": "user-1", "role": "admin", "teams": ["a", "b"]}
    # our own signer produces the very same bytes for the same inputs
    assert (
        sign_token(KEY_ID, SECRET, claims["act"], expires_at_s=4102444800, issued_at_s=OFFICIAL_IAT) == OFFICIAL_TOKEN
    )


def test_verify_key_token_failures():
    with pytest.raises(MissingUser):
        verify_key_token(OFFICIAL_TOKEN, KeyRecord(KEY_ID, ORG, SECRET + "x", ()), NOW)
    with pytest.raises(MissingUser, match="expired"):
        verify_key_token(OFFICIAL_TOKEN, KEY, 4102444800 + 31)
    # within the leeway
    verify_key_token(OFFICIAL_TOKEN, KEY, 4102444800 + 29)
    with pytest.raises(MissingUser, match="kid"):
        verify_key_token(OFFICIAL_TOKEN, KeyRecord("sbk_other", ORG, SECRET, ()), NOW)
    wrong_aud = sign_token(KEY_ID, SECRET, {}, expires_at_s=NOW + 60, issued_at_s=NOW, audience="https://elsewhere/")
    with pytest.raises(MissingUser, match=r"(?i)audience"):
        verify_key_token(wrong_aud, KEY, NOW)
    assert verify_key_token(wrong_aud, KEY, NOW, audience="https://elsewhere/")["aud"] == "https://elsewhere/"
    not_yet = jwt.encode(
        {"act": {}, "aud": "https://api.statebacked.dev/", "exp": NOW + 600, "nbf": NOW + 300},
        SECRET.encode(),
        algorithm="HS256",
        headers={"kid": KEY_ID},
    )
    with pytest.raises(MissingUser, match="nbf"):
        verify_key_token(not_yet, KEY, NOW)
    assert verify_key_token(not_yet, KEY, NOW + 290)["nbf"] == NOW + 300
    no_exp = jwt.encode(
        {"act": {}, "aud": "https://api.statebacked.dev/"}, SECRET.encode(), algorithm="HS256", headers={"kid": KEY_ID}
    )
    with pytest.raises(MissingUser, match="exp"):
        verify_key_token(no_exp, KEY, NOW)
    with pytest.raises(MissingUser):
        verify_key_token("not.a.jwt", KEY, NOW)
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    foreign = jwt.encode(
        {"act": {}, "aud": "https://api.statebacked.dev/", "exp": NOW + 60},
        rs,
        algorithm="RS256",
        headers={"kid": KEY_ID},
    )
    with pytest.raises(MissingUser):
        verify_key_token(foreign, KEY, NOW)


def test_auth_context_of():
    assert auth_context_of({"act": {"sub": "a", "x": 1}, "sub": "b"}) == {"sub": "a", "x": 1}
    assert auth_context_of({"act": {"x": 1}, "sub": "b"}) == {"x": 1, "sub": "b"}
    assert auth_context_of({"sub": "b"}) == {"sub": "b"}
    assert auth_context_of({"act": "nonsense"}) == {}


def test_anonymous_records():
    idp = anonymous_idp(ORG)
    issuer = f"https://{ORG}.anonymous.auth.statebacked.dev"
    assert idp == IdentityProviderRecord(
        org_id=ORG,
        aud=issuer,
        iss=issuer,
        algs=("HS256",),
        key=b64url(ORG.encode()),
        jwks_url=None,
        mapping={"sid.$": "$.sid", "did.$": "$.did"},
    )
    assert "=" not in (idp.key or "")
    assert anonymous_token_provider(ORG, KEY_ID) == TokenProviderRecord(
        org_id=ORG,
        service="anonymous-statebacked-dev",
        key_id=KEY_ID,
        mapping={"sid.$": "$.sid", "did.$": "$.did", "auth": "anonymous"},
    )
    validate_identity_provider(idp)


def test_validate_identity_provider():
    good = IdentityProviderRecord(ORG, "aud", None, ("HS256",), b64url(b"k" * 32), None, {"sub.$": "$.sub"})
    validate_identity_provider(good)
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    cases = {
        "aud": IdentityProviderRecord(ORG, None, "", ("HS256",), b64url(b"k"), None, {}),
        "algs": IdentityProviderRecord(ORG, "a", None, ("none",), b64url(b"k"), None, {}),
        "key": IdentityProviderRecord(ORG, "a", None, ("HS256",), None, None, {}),
        "jwksUrl": IdentityProviderRecord(ORG, "a", None, ("RS256",), None, "file:///etc/passwd", {}),
        "mapping": IdentityProviderRecord(ORG, "a", None, ("HS256",), b64url(b"k"), None, {"x.$": "nope"}),
    }
    for parameter, idp in cases.items():
        with pytest.raises(InvalidParameter) as caught:
            validate_identity_provider(idp)
        assert caught.value.parameter == parameter
    with pytest.raises(InvalidParameter, match="mix"):
        validate_identity_provider(
            IdentityProviderRecord(ORG, "a", None, ("HS256", "RS256"), b64url(rsa_pem), None, {})
        )
    with pytest.raises(InvalidParameter, match="empty"):
        validate_identity_provider(IdentityProviderRecord(ORG, "a", None, ("HS256",), "", None, {}))
    with pytest.raises(InvalidParameter, match="PEM"):
        validate_identity_provider(IdentityProviderRecord(ORG, "a", None, ("RS256",), b64url(b"garbage"), None, {}))
    with pytest.raises(InvalidParameter, match="ES256"):
        validate_identity_provider(IdentityProviderRecord(ORG, "a", None, ("ES256",), b64url(rsa_pem), None, {}))
    validate_identity_provider(IdentityProviderRecord(ORG, "a", None, ("RS256", "PS256"), b64url(rsa_pem), None, {}))


# ---------------------------------------------------------------------------------------------
# Token exchange end to end


class JwksServer:
    def __init__(self) -> None:
        self.document: dict = {"keys": []}
        self.hits = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    async def start(self) -> None:
        async def jwks(request: web.Request) -> web.Response:
            self.hits += 1
            return web.json_response(self.document)

        async def big(request: web.Request) -> web.Response:
            return web.Response(body=b"x" * (2 * 1024 * 1024), content_type="application/json")

        async def slow(request: web.Request) -> web.Response:
            await asyncio.wait_for(self._release.wait(), 120)  # stop() releases it
            return web.json_response(self.document)

        async def broken(request: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(status=500, text="oops")

        app = web.Application()
        app.router.add_get("/jwks.json", jwks)
        app.router.add_get("/big.json", big)
        app.router.add_get("/slow.json", slow)
        app.router.add_get("/broken.json", broken)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def url(self, path: str = "/jwks.json") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def jwks_server():
    server = JwksServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def transport():
    t = AiohttpTransport(FetchPolicy(allow_private=True, timeout_s=10))
    yield t
    await t.close()


@pytest.fixture
def clock():
    now = [1000.0]
    return now


@pytest.fixture
def jwks(transport, clock):
    return JwksCache(transport, clock=lambda: clock[0])


@pytest.fixture
def directory():
    d = MemoryDirectory()
    d.add_provider(TokenProviderRecord(ORG, "app", KEY_ID, {"sub.$": "$.user", "role.$": "$.role", "app": "web"}))
    return d


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(private) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_jwk(private, alg: str, kid: str) -> dict:
    algorithm = jwt.get_algorithm_by_name(alg)
    return {**json.loads(algorithm.to_jwk(private.public_key())), "kid": kid, "use": "sig"}


def subject_claims(**extra) -> dict:
    return {"sub": "idp-user-7", "role": "editor", "exp": NOW + 3600, "iat": NOW - 10, **extra}


def assert_issued(token: str, act: dict, exp: int) -> None:
    claims = verify_key_token(token, KEY, NOW)
    assert claims == {
        "act": act,
        "aud": "https://api.statebacked.dev/",
        "exp": exp,
        "iss": f"https://{KEY_ID}.client.statebacked.dev/",
        "iat": NOW,
    }
    assert segment_json(token, 0) == {"alg": "HS256", "kid": KEY_ID}
    assert browser_atob_exp(token) == exp


async def test_exchange_hs256_custom_idp(directory, jwks):
    secret = b"supabase-jwt-secret-of-32-bytes!!"
    directory.add_idp(
        IdentityProviderRecord(
            ORG,
            "authenticated",
            "https://proj.supabase.co/auth/v1",
            ("HS256",),
            b64url(secret),
            None,
            {"user.$": "$.sub", "role.$": "$.role"},
        )
    )
    subject = jwt.encode(
        subject_claims(aud="authenticated", iss="https://proj.supabase.co/auth/v1"), secret, algorithm="HS256"
    )
    token = await exchange(directory, subject_token=subject, audience=audience("app"), now_s=NOW, jwks=jwks)
    assert_issued(token, {"sub": "idp-user-7", "role": "editor", "app": "web"}, NOW + 3600)
    assert auth_context_of(verify_key_token(token, KEY, NOW)) == {"sub": "idp-user-7", "role": "editor", "app": "web"}


async def test_exchange_lifetime_is_capped_at_24h(directory, jwks):
    secret = b"k" * 64
    directory.add_idp(
        IdentityProviderRecord(ORG, None, "https://issuer/", ("HS512",), b64url(secret), None, {"user.$": "$.sub"})
    )
    subject = jwt.encode(subject_claims(iss="https://issuer/", exp=NOW + 10 * 86400), secret, algorithm="HS512")
    token = await exchange(directory, subject_token=subject, audience=audience("app"), now_s=NOW, jwks=jwks)
    assert_issued(token, {"sub": "idp-user-7", "app": "web"}, NOW + 86400)


async def test_exchange_rs256_pem_idp(directory, jwks, rsa_key):
    directory.add_idp(
        IdentityProviderRecord(
            ORG,
            "https://example.auth0.com/api/v2/",
            "https://example.auth0.com/",
            ("RS256",),
            b64url(public_pem(rsa_key)),
            None,
            {"user.$": "$.sub", "role.$": "$['https://example.com/role']"},
        )
    )
    claims = subject_claims(
        aud=["https://example.auth0.com/api/v2/", "https://example.auth0.com/userinfo"],
        iss="https://example.auth0.com/",
        **{"https://example.com/role": "owner"},
    )
    subject = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "whatever"})
    token = await exchange(directory, subject_token=subject, audience=audience("app"), now_s=NOW, jwks=jwks)
    assert_issued(token, {"sub": "idp-user-7", "role": "owner", "app": "web"}, NOW + 3600)
    # an HS256 token "signed" with the public key is refused (algorithm confusion)
    forged = hs256(claims, public_pem(rsa_key))
    with pytest.raises(MissingUser, match="HS256"):
        await exchange(directory, subject_token=forged, audience=audience("app"), now_s=NOW, jwks=jwks)


async def test_exchange_eddsa_jwk_key(directory, jwks):
    private = ed25519.Ed25519PrivateKey.generate()
    jwk = public_jwk(private, "EdDSA", "ed-1")
    directory.add_idp(
        IdentityProviderRecord(
            ORG, "my-api", None, ("EdDSA",), b64url(json.dumps(jwk).encode()), None, {"user.$": "$.sub"}
        )
    )
    subject = jwt.encode(subject_claims(aud="my-api"), private, algorithm="EdDSA", headers={"kid": "ed-1"})
    token = await exchange(directory, subject_token=subject, audience=audience("app"), now_s=NOW, jwks=jwks)
    assert_issued(token, {"sub": "idp-user-7", "app": "web"}, NOW + 3600)


async def test_exchange_es256_via_jwks(directory, jwks, jwks_server, ec_key, clock):
    jwks_server.document = {
        "keys": [public_jwk(ec_key, "ES256", "ec-1"), {"kty": "oct", "k": b64url(b"s" * 32), "kid": "ec-1"}]
    }
    issuer = "https://cognito-idp.eu-west-1.amazonaws.com/pool"
    directory.add_idp(
        IdentityProviderRecord(
            ORG,
            None,
            issuer,
            ("ES256",),
            None,
            jwks_server.url(),
            {"user.$": "$.sub", "role.$": "$['cognito:groups'][0]"},
        )
    )
    subject = jwt.encode(
        subject_claims(iss=issuer, **{"cognito:groups": ["admins"]}), ec_key, algorithm="ES256", headers={"kid": "ec-1"}
    )
    token = await exchange(directory, subject_token=subject, audience=audience("app"), now_s=NOW, jwks=jwks)
    assert_issued(token, {"sub": "idp-user-7", "role": "admins", "app": "web"}, NOW + 3600)
    # cached: a second exchange does not refetch
    await exchange(directory, subject_token=subject, audience=audience("app"), now_s=NOW, jwks=jwks)
    assert jwks_server.hits == 1
    # a symmetric key published in a JWKS is never used, even under the right kid
    with pytest.raises(MissingUser):
        await exchange(
            directory,
            subject_token=hs256(subject_claims(iss=issuer), b"s" * 32, {"alg": "HS256", "kid": "ec-1"}),
            audience=audience("app"),
            now_s=NOW,
            jwks=jwks,
        )
    # a token signed by another key with the same kid fails
    other = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(subject_claims(iss=issuer), other, algorithm="ES256", headers={"kid": "ec-1"})
    with pytest.raises(MissingUser, match="signature"):
        await exchange(directory, subject_token=forged, audience=audience("app"), now_s=NOW, jwks=jwks)


async def test_exchange_anonymous_official_client_token(jwks):
    directory = MemoryDirectory()
    directory.add_idp(anonymous_idp(ORG))
    directory.add_provider(anonymous_token_provider(ORG, KEY_ID))
    now = OFFICIAL_ANONYMOUS_IAT + 5
    token = await exchange(
        directory, subject_token=OFFICIAL_ANONYMOUS_TOKEN, audience=audience(ANONYMOUS_SERVICE), now_s=now, jwks=jwks
    )
    claims = verify_key_token(token, KEY, now)
    assert claims["exp"] == OFFICIAL_ANONYMOUS_IAT + 86400 and claims["iat"] == now
    assert auth_context_of(claims) == {"sid": "sess-1", "did": "sess-1", "auth": "anonymous"}
    # the same, signed here exactly as the client does (HS256, key = org ID bytes, typ JWT)
    issuer = f"https://{ORG}.anonymous.auth.statebacked.dev"
    subject = hs256(
        {"aud": issuer, "iss": issuer, "iat": NOW, "exp": NOW + 86400, "sid": "s-2", "did": "d-2"}, ORG.encode()
    )
    assert subject.split(".")[0] == OFFICIAL_ANONYMOUS_TOKEN.split(".")[0]
    token = await exchange(directory, subject_token=subject, audience=audience(ANONYMOUS_SERVICE), now_s=NOW, jwks=jwks)
    assert_issued(token, {"sid": "s-2", "did": "d-2", "auth": "anonymous"}, NOW + 86400)
    # another org's ID does not sign for this org
    forged = hs256(
        {"aud": issuer, "iss": issuer, "iat": NOW, "exp": NOW + 86400, "sid": "s", "did": "d"}, OTHER_ORG.encode()
    )
    with pytest.raises(MissingUser, match="signature"):
        await exchange(directory, subject_token=forged, audience=audience(ANONYMOUS_SERVICE), now_s=NOW, jwks=jwks)


async def test_exchange_failures(directory, jwks):
    secret = b"k" * 32
    directory.add_idp(
        IdentityProviderRecord(ORG, "my-aud", "my-iss", ("HS256",), b64url(secret), None, {"user.$": "$.sub"})
    )

    async def attempt(subject: str, aud: str = audience("app"), now: int = NOW) -> str:
        with pytest.raises(MissingUser) as caught:
            await exchange(directory, subject_token=subject, audience=aud, now_s=now, jwks=jwks)
        assert caught.value.status == 403 and caught.value.code == "missing-user"
        return caught.value.message

    good = jwt.encode(subject_claims(aud="my-aud", iss="my-iss"), secret, algorithm="HS256")
    assert await exchange(directory, subject_token=good, audience=audience("app"), now_s=NOW, jwks=jwks)
    assert "expired" in await attempt(good, now=NOW + 3600)
    assert "expired" in await attempt(
        jwt.encode(subject_claims(aud="my-aud", iss="my-iss", exp=NOW - 1), secret, algorithm="HS256")
    )
    assert "nbf" in await attempt(
        jwt.encode(subject_claims(aud="my-aud", iss="my-iss", nbf=NOW + 100), secret, algorithm="HS256")
    )
    assert "exp" in await attempt(jwt.encode({"aud": "my-aud", "iss": "my-iss"}, secret, algorithm="HS256"))
    assert "signature" in await attempt(
        jwt.encode(subject_claims(aud="my-aud", iss="my-iss"), b"x" * 32, algorithm="HS256")
    )
    assert "HS384" in await attempt(
        jwt.encode(subject_claims(aud="my-aud", iss="my-iss"), b"k" * 48, algorithm="HS384")
    )
    assert "token provider" in await attempt(good, aud=audience("unknown-service"))
    assert "token provider" in await attempt(good, aud=audience("app", OTHER_ORG))
    assert "audience" in await attempt(good, aud="https://api.statebacked.dev/")
    assert "matches" in await attempt(
        jwt.encode(subject_claims(aud="my-aud", iss="other-iss"), secret, algorithm="HS256")
    )
    assert "matches" in await attempt(jwt.encode(subject_claims(aud="other", iss="my-iss"), secret, algorithm="HS256"))
    assert "matches" in await attempt(jwt.encode(subject_claims(), secret, algorithm="HS256"))
    assert "not a JWT" in await attempt("garbage")
    unsigned = (
        f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{b64url_json(subject_claims(aud='my-aud', iss='my-iss'))}."
    )
    assert "none" in await attempt(unsigned)
    # the key behind the token provider was deleted
    del directory.keys[KEY_ID]
    assert "no longer exists" in await attempt(good)


async def test_exchange_prefers_the_idp_that_verifies(directory, jwks):
    """Two IdPs match by aud; the one whose key verifies the signature decides the mapping."""
    directory.add_idp(
        IdentityProviderRecord(
            ORG, "shared", None, ("HS256",), b64url(b"a" * 32), None, {"user.$": "$.sub", "role": "from-a"}
        )
    )
    directory.add_idp(
        IdentityProviderRecord(
            ORG, "shared", "iss-b", ("HS256",), b64url(b"b" * 32), None, {"user.$": "$.sub", "role": "from-b"}
        )
    )
    for key, role in ((b"a" * 32, "from-a"), (b"b" * 32, "from-b")):
        subject = jwt.encode(subject_claims(aud="shared", iss="iss-b"), key, algorithm="HS256")
        token = await exchange(directory, subject_token=subject, audience=audience("app"), now_s=NOW, jwks=jwks)
        assert auth_context_of(verify_key_token(token, KEY, NOW))["role"] == role


async def test_exchange_jwks_refused_on_loopback_by_default(directory, jwks_server, ec_key):
    jwks_server.document = {"keys": [public_jwk(ec_key, "ES256", "ec-1")]}
    directory.add_idp(
        IdentityProviderRecord(ORG, "my-aud", None, ("ES256",), None, jwks_server.url(), {"user.$": "$.sub"})
    )
    subject = jwt.encode(subject_claims(aud="my-aud"), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    strict = AiohttpTransport(FetchPolicy())
    try:
        with pytest.raises(MissingUser, match="loopback"):
            await exchange(
                directory, subject_token=subject, audience=audience("app"), now_s=NOW, jwks=JwksCache(strict)
            )
    finally:
        await strict.close()
    assert jwks_server.hits == 0


# ---------------------------------------------------------------------------------------------
# JWKS cache


async def test_jwks_cache_ttl_and_unknown_kid(jwks_server, transport, ec_key, clock):
    cache = JwksCache(transport, ttl_s=600, unknown_kid_refetch_s=60, clock=lambda: clock[0])
    jwks_server.document = {"keys": [public_jwk(ec_key, "ES256", "k1")]}
    url = jwks_server.url()
    [key] = await cache.keys(url, kid="k1", alg="ES256")
    assert isinstance(key, jwt.PyJWK) and key.key_id == "k1"
    assert await cache.keys(url, kid=None, alg="ES256") == [key]
    assert await cache.keys(url, kid="k1", alg="RS256") == []  # wrong key type for the algorithm
    assert jwks_server.hits == 1
    # an unknown kid refetches, but at most once a minute
    assert await cache.keys(url, kid="k2", alg="ES256") == []
    assert jwks_server.hits == 1  # the set was fetched less than a minute ago
    clock[0] += 61
    rotated = ec.generate_private_key(ec.SECP256R1())
    jwks_server.document = {"keys": [public_jwk(ec_key, "ES256", "k1"), public_jwk(rotated, "ES256", "k2")]}
    assert len(await cache.keys(url, kid="k2", alg="ES256")) == 1
    assert jwks_server.hits == 2
    for _ in range(5):
        assert await cache.keys(url, kid="k3", alg="ES256") == []
    assert jwks_server.hits == 2
    clock[0] += 61
    assert await cache.keys(url, kid="k3", alg="ES256") == []
    assert jwks_server.hits == 3
    # the TTL expires
    await cache.keys(url, kid="k1", alg="ES256")
    assert jwks_server.hits == 3
    clock[0] += 601
    await cache.keys(url, kid="k1", alg="ES256")
    assert jwks_server.hits == 4


async def test_jwks_cache_concurrent_callers_share_one_download(jwks_server, transport, ec_key, clock):
    cache = JwksCache(transport, clock=lambda: clock[0])
    jwks_server.document = {"keys": [public_jwk(ec_key, "ES256", "k1")]}
    results = await asyncio.gather(*(cache.keys(jwks_server.url(), kid="k1", alg="ES256") for _ in range(10)))
    assert all(len(r) == 1 for r in results)
    assert jwks_server.hits == 1


async def test_jwks_cache_failures(jwks_server, transport, ec_key, clock):
    # The size limit wins by construction: no timeout to speak of (reading 1 MB on a busy machine).
    roomy = JwksCache(transport, max_bytes=1024 * 1024, timeout_s=60, failure_retry_s=10, clock=lambda: clock[0])
    with pytest.raises(MissingUser, match="bytes"):
        await roomy.keys(jwks_server.url("/big.json"), kid=None, alg="ES256")
    # /slow.json answers only when the server stops: the timeout wins by construction.
    cache = JwksCache(transport, max_bytes=1024 * 1024, timeout_s=0.5, failure_retry_s=10, clock=lambda: clock[0])
    with pytest.raises(MissingUser, match="timed out"):
        await cache.keys(jwks_server.url("/slow.json"), kid=None, alg="ES256")
    with pytest.raises(MissingUser, match="500"):
        await cache.keys(jwks_server.url("/broken.json"), kid=None, alg="ES256")
    with pytest.raises(MissingUser, match="500"):
        await cache.keys(jwks_server.url("/broken.json"), kid="new", alg="ES256")
    assert jwks_server.hits == 1  # failures are retried only after failure_retry_s
    clock[0] += 11
    with pytest.raises(MissingUser, match="500"):
        await cache.keys(jwks_server.url("/broken.json"), kid=None, alg="ES256")
    assert jwks_server.hits == 2
    jwks_server.document = {"nope": 1}
    with pytest.raises(MissingUser, match="JWK set"):
        await cache.keys(jwks_server.url(), kid=None, alg="ES256")


async def test_jwks_cache_keeps_the_previous_set_when_a_refresh_fails(jwks_server, transport, ec_key, clock):
    cache = JwksCache(transport, ttl_s=600, max_stale_s=3600, clock=lambda: clock[0])
    jwks_server.document = {"keys": [public_jwk(ec_key, "ES256", "k1")]}
    url = jwks_server.url()
    assert len(await cache.keys(url, kid="k1", alg="ES256")) == 1
    jwks_server.document = {"nope": 1}
    clock[0] += 601
    assert len(await cache.keys(url, kid="k1", alg="ES256")) == 1  # refresh failed; the old set serves
    assert jwks_server.hits == 2
    clock[0] += 3600
    with pytest.raises(MissingUser, match="JWK set"):
        await cache.keys(url, kid="k1", alg="ES256")
