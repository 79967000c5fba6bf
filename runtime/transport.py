"""How the runtime performs a guest's fetch: a protocol the server implements (with aiohttp).

The runtime itself never opens a socket; it hands each committed fetch to a :class:`Transport`.
A transport raises :class:`FetchError` for anything the guest should see as a failed fetch (refused
address, timeout, oversized response); any other exception is a host fault.
"""

from __future__ import annotations

from typing import Protocol

from .limits import Limits
from .protocol import FetchRequest, FetchResponse

__all__ = ["FetchError", "Transport"]


class FetchError(Exception):
    """A failed fetch, reported to the guest as a rejected promise (a TypeError, as in browsers)."""

    def __init__(self, message: str, name: str = "TypeError") -> None:
        super().__init__(message)
        self.name = name


class Transport(Protocol):
    async def fetch(self, request: FetchRequest, limits: Limits) -> FetchResponse: ...
