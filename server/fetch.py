"""The server's implementation of the runtime's Transport: guest fetches performed with aiohttp.

Every hop is checked against the operator's FetchPolicy: IP literals before connecting, host names
through a resolver that drops refused addresses (so DNS rebinding cannot slip an internal address
in between check and connect), and redirects are followed by hand so that each target is checked.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from runtime import FetchError, FetchPolicy, FetchRequest, FetchResponse, Limits, address_refusal, url_refusal

__all__ = ["AiohttpTransport"]

MAX_REDIRECTS = 20
# Headers the guest may not set: they describe the connection, which the host owns.
_FORBIDDEN_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade"})


class _Refused(OSError):
    pass


class _GuardedResolver(AbstractResolver):
    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if address_refusal(r["host"], self._policy, host) is None]
        if not allowed:
            reason = address_refusal(results[0]["host"], self._policy, host) if results else "no address"
            raise _Refused(f"fetch to {host} refused: {reason}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class AiohttpTransport:
    """Performs guest fetches. Create it inside a running event loop; close it on shutdown."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        connector = aiohttp.TCPConnector(resolver=_GuardedResolver(policy), limit=100, use_dns_cache=False)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False)

    async def close(self) -> None:
        await self._session.close()

    async def fetch(self, request: FetchRequest, limits: Limits) -> FetchResponse:
        headers = [(k, v) for k, v in request.headers if k.lower() not in _FORBIDDEN_HEADERS]
        url, method, body = request.url, request.method.upper(), request.body
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                for hop in range(MAX_REDIRECTS + 1):
                    refusal = url_refusal(url, self.policy)
                    if refusal is not None:
                        raise FetchError(f"fetch to {url} refused: {refusal}")
                    async with self._session.request(
                        method, URL(url, encoded=True), headers=headers, data=body, allow_redirects=False
                    ) as response:
                        location = response.headers.get("Location")
                        if response.status in (301, 302, 303, 307, 308) and location:
                            url = str(response.url.join(URL(location)))
                            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                                method, body = "GET", None
                            continue
                        data = await _read_limited(response, limits.max_fetch_response_bytes)
                        return FetchResponse(
                            status=response.status,
                            status_text=response.reason or "",
                            url=str(response.url),
                            redirected=hop > 0,
                            headers=tuple((k, v) for k, v in response.headers.items()),
                            body=data,
                        )
                raise FetchError(f"fetch to {request.url}: more than {MAX_REDIRECTS} redirects")
        except TimeoutError:
            raise FetchError(f"fetch to {request.url} timed out after {self.policy.timeout_s} s") from None
        except aiohttp.ClientConnectorError as exc:
            cause: Any = exc.os_error
            if isinstance(cause, _Refused):
                raise FetchError(str(cause)) from None
            raise FetchError(f"fetch to {url} failed: cannot connect ({exc.os_error})") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise FetchError(f"fetch to {url} failed: {exc}") from None


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise FetchError(f"the response of {response.url} is over {limit} bytes (max_fetch_response_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)
