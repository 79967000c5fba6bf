"""Tokens in @statebacked/token's format, signed locally (no server call)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jwt

__all__ = ["sign_token"]

AUDIENCE = "https://api.statebacked.dev/"


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
