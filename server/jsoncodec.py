"""JSON on the hot path: the store's columns and the API's answers (orjson, with the standard
library as the fallback for what orjson refuses).

orjson encodes ~15x and decodes ~3.5x faster than ``json`` on an instance's state (measured in
docs/performance.md, "The commit path"); both write compact JSON with non-ASCII characters as
UTF-8, so the stored text is the same except for two cases where the standard library's output is
not JSON at all: ``NaN``/``Infinity`` (a request body may hold them: Python's parser accepts them)
become ``null``, as JavaScript's ``JSON.stringify`` writes them; and integers beyond 64 bits or
non-string keys, which orjson refuses, are written by ``json`` as before. ``loads`` reads what
either wrote (a ``NaN`` stored by an older statehost too).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "dumps_bytes", "loads"]

_FALLBACK = (TypeError, orjson.JSONEncodeError)


def dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII as is (the form the database stores)."""
    try:
        return orjson.dumps(value).decode()
    except _FALLBACK:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dumps_bytes(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes (an HTTP body)."""
    try:
        return orjson.dumps(value)
    except _FALLBACK:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def loads(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # NaN and Infinity, which older rows may hold
