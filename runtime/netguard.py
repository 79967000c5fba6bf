"""Which network addresses a guest's fetch may reach (SSRF protection).

By default a tenant's machine may reach only public unicast addresses: no loopback, private
(RFC 1918, ULA), link-local (including the 169.254.169.254 metadata service), CGNAT, multicast,
reserved or unspecified addresses. The operator may allow private addresses, or name hosts that
are allowed anyway. Checks run on every resolved address and on every redirect hop.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .limits import FetchPolicy

__all__ = ["address_refusal", "url_refusal"]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def address_refusal(address: str, policy: FetchPolicy, host: str | None = None) -> str | None:
    """Why ``address`` may not be fetched, or None when it may."""
    if policy.allow_private or (host is not None and host.lower() in policy.allowed_hosts):
        return None
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        kind = "loopback"
    elif ip.is_link_local:
        kind = "link-local (cloud metadata)"
    elif ip.is_unspecified:
        kind = "unspecified"
    elif ip.is_multicast:
        kind = "multicast"
    elif isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        kind = "shared (CGNAT)"
    elif ip.is_private:
        kind = "private"
    elif ip.is_reserved or not ip.is_global:
        kind = "reserved"
    else:
        return None
    return f"{ip} is a {kind} address; the operator has not allowed private addresses (fetch.allow_private)"


def url_refusal(url: str, policy: FetchPolicy) -> str | None:
    """Why ``url`` may not be fetched before resolving it (scheme, credentials, IP literals)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"invalid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"only http and https URLs can be fetched, not {parts.scheme or 'a relative URL'}"
    host = parts.hostname
    if not host:
        return "the URL has no host"
    if port == 0:
        return "port 0 cannot be fetched"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host.lower() in ("localhost",) or host.lower().endswith(".localhost"):
            return address_refusal("127.0.0.1", policy, host)
        return None
    return address_refusal(host, policy, host)
