"""Identifiers in State Backed's format: a prefix and the base64url (no padding) of a random UUID."""

from __future__ import annotations

import base64
import secrets
import uuid

__all__ = ["new_id", "new_secret"]


def new_id(prefix: str) -> str:
    """``org_``, ``ver_``, ``sbk_``, ``usr_`` + 22 characters (wire-api 1.5)."""
    return f"{prefix}_{base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b'=').decode()}"


def new_secret() -> str:
    """A key secret: ``sbsec_`` + base64url of 32 random bytes."""
    return "sbsec_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
