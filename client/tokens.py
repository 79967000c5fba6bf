"""Tokens in @statebacked/token's format, signed locally (no server call).

``sign_token_at`` is statehost's one signer of key-signed tokens: the client signs with it, and the
server issues exchanged tokens with it (server/exchange.py imports it; docs/decisions.md, "One token signer"). The
client stands alone, so the implementation lives here and the server, a layer above, imports it.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import jwt

__all__ = ["AUDIENCE", "anonymous_subject_token", "sign_token", "sign_token_at"]

AUDIENCE = "https://api.statebacked.dev/"
# PyJWT >= 2.10 warns about HMAC keys under 32 bytes; the anonymous key is the 26-byte org ID by
# design (wire-api 2.9), so that one warning is silenced where the key is used.
SHORT_KEY_WARNING: type[Warning] = getattr(jwt, "InsecureKeyLengthWarning", UserWarning)
ANONYMOUS_SERVICE = "anonymous-statebacked-dev"
"""The token provider every org with anonymous access has (wire-api 2.9)."""


def sign_token(
    key_id: str,
    secret: str,
    claims: Mapping[str, Any],
    *,
    expires_in_s: int = 86_400,
    issuer: str | None = None,
    now_s: int | None = None,
) -> str:
    """HS256 with the whole secret string as key; ``claims`` become ``act`` (the authContext)."""
    now = int(time.time()) if now_s is None else now_s
    return sign_token_at(
        key_id, secret, claims, expires_at_s=now + expires_in_s, issued_at_s=now, issuer=issuer or None
    )


def sign_token_at(
    key_id: str,
    secret: str,
    act: Mapping[str, Any],
    *,
    expires_at_s: int,
    issued_at_s: int,
    issuer: str | None = None,
    audience: str = AUDIENCE,
) -> str:
    """An HS256 JWT in the ``@statebacked/token`` shape, byte for byte for the same inputs.

    ValueError if ``act`` is not JSON (NaN, infinities)."""
    payload = {
        "act": dict(act),
        "aud": audience,
        "exp": expires_at_s,
        "iss": issuer if issuer is not None else f"https://{key_id}.client.statebacked.dev/",
        "iat": issued_at_s,
    }
    with _quiet_key_length():
        return jwt.api_jws.encode(
            _atob_safe_json(payload), secret.encode(), algorithm="HS256", headers={"kid": key_id, "typ": None}
        )


@contextmanager
def _quiet_key_length() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SHORT_KEY_WARNING)
        yield


_ATOB_UNSAFE = {">": "\\u003e", "?": "\\u003f", "~": "\\u007e", "\x7f": "\\u007f"}


def _atob_safe_json(payload: Mapping[str, Any]) -> bytes:
    """Compact JSON whose base64url never contains ``-`` or ``_`` (a browser's ``atob`` reads it).

    With ASCII-only input a base64 digit is 62 or 63 only when the last byte of a 3-byte group is
    ``>``, ``?``, ``~`` or DEL; those occur only inside JSON strings, where ``\\u00XX`` escapes are
    equivalent.
    """
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    for char, escape in _ATOB_UNSAFE.items():
        text = text.replace(char, escape)
    return text.encode("ascii")


def anonymous_subject_token(
    org_id: str, session_id: str | None = None, device_id: str | None = None, *, now_s: int | None = None
) -> str:
    """The identity-provider token an anonymous session exchanges, as @statebacked/client signs it:
    HS256 keyed by the org ID's bytes, ``aud`` = ``iss`` = the org's anonymous issuer, one day long."""
    now = int(time.time()) if now_s is None else now_s
    sid = session_id or str(uuid.uuid4())
    issuer = f"https://{org_id}.anonymous.auth.statebacked.dev"
    claims = {"aud": issuer, "iss": issuer, "iat": now, "exp": now + 86_400, "sid": sid, "did": device_id or sid}
    with _quiet_key_length():
        return jwt.encode(claims, org_id.encode(), algorithm="HS256")
