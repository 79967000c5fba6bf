"""Host side of the guest's pure requests (crypto), performed inside the engine's entry loop.

Pure requests have no effect outside the sandbox, so they need no commit first (unlike ``fetch``).
Every request comes from untrusted guest code: each field is validated, and a bad request becomes
an error for the guest, never an exception in the host.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

__all__ = ["PURE_KINDS", "perform_pure"]

_HASHES = {"SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512"}
PURE_KINDS = frozenset({"crypto.digest", "crypto.hmac"})


class _BadRequest(Exception):
    pass


def _bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _BadRequest(f"{what} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _BadRequest(f"{what} is not valid base64") from exc


def _hash(value: Any) -> str:
    if not isinstance(value, str) or value not in _HASHES:
        raise _BadRequest(f"unsupported hash {value!r}; use one of {', '.join(_HASHES)}")
    return _HASHES[value]


def perform_pure(request: Mapping[str, Any]) -> dict[str, Any]:
    """Perform one pure request; return its HostResult (host.d.ts) as a dict."""
    rid = request.get("id")
    try:
        kind = request.get("kind")
        if kind == "crypto.digest":
            digest = hashlib.new(_hash(request.get("algorithm")), _bytes(request.get("data"), "data")).digest()
        elif kind == "crypto.hmac":
            key = _bytes(request.get("key"), "key")
            data = _bytes(request.get("data"), "data")
            digest = hmac.new(key, data, _hash(request.get("hash"))).digest()
        else:
            raise _BadRequest(f"unknown host request kind {kind!r}")
    except _BadRequest as exc:
        return {"id": rid, "ok": False, "error": {"name": "TypeError", "message": str(exc)}}
    return {"id": rid, "ok": True, "value": base64.b64encode(digest).decode()}
