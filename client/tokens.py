"""Tokens in @statebacked/token's format, signed locally (no server call)."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Mapping
from typing import Any

import jwt

__all__ = ["anonymous_subject_token", "sign_token"]

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
    payload = {
        "act": dict(claims),
        "aud": AUDIENCE,
        "exp": now + expires_in_s,
        "iss": issuer or f"https://{key_id}.client.statebacked.dev/",
        "iat": now,
    }
    return jwt.encode(payload, secret, algorithm="HS256", headers={"kid": key_id, "typ": None})


def anonymous_subject_token(
    org_id: str, session_id: str | None = None, device_id: str | None = None, *, now_s: int | None = None
) -> str:
    """The identity-provider token an anonymous session exchanges, as @statebacked/client signs it:
    HS256 keyed by the org ID's bytes, ``aud`` = ``iss`` = the org's anonymous issuer, one day long."""
    now = int(time.time()) if now_s is None else now_s
    sid = session_id or str(uuid.uuid4())
    issuer = f"https://{org_id}.anonymous.auth.statebacked.dev"
    claims = {"aud": issuer, "iss": issuer, "iat": now, "exp": now + 86_400, "sid": sid, "did": device_id or sid}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SHORT_KEY_WARNING)
        return jwt.encode(claims, org_id.encode(), algorithm="HS256")
