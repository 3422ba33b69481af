"""Who is calling: the client's address, behind trusted proxies or not.

Every part of the gateway that keys, records or shows a caller's address (the
failed-secret lockout, the audit trail, the request log line, the command's source that
`triggers tail` and the history show) takes it from `client_address`, so they all agree.

Without ``TRIGGERS_TRUSTED_PROXIES`` the client is the TCP peer and ``Forwarded`` /
``X-Forwarded-For`` are ignored: anyone can write them, so believing them would let a
caller pick the address its failed guesses count against. With it, and only when the
peer is one of those proxies, the header they write (``TRIGGERS_PROXY_HEADER``,
``X-Forwarded-For`` by default) is read from the right: each trusted proxy appends the
address it received the call from, so the first address from the right that is not a
trusted proxy is the client. What a client wrote itself sits further left and is never
reached; an entry that is not an address (``unknown``, an obfuscated name, garbage) stops
the walk at the proxy that passed it on.
"""

from __future__ import annotations

import ipaddress

from aiohttp import hdrs, web

from gateway.keys import CLIENT_ADDRESS, SETTINGS
from shared.settings import Network

__all__ = ["client_address"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    """An address from a header entry: ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``."""
    text = text.strip().strip('"')
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else ""
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has several colons
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return address


def _trusted(address: Address, proxies: tuple[Network, ...]) -> bool:
    return any(address in network for network in proxies)


def _hops(request: web.Request, header: str) -> list[str]:
    """The addresses the proxies reported, nearest client first, as the header lists them."""
    if header == "forwarded":
        # aiohttp parses RFC 7239 (quoting, several headers, several elements each).
        return [element.get("for", "") for element in request.forwarded]
    return [
        hop
        for value in request.headers.getall(hdrs.X_FORWARDED_FOR, ())
        for hop in value.split(",")
    ]


def _resolve(request: web.Request) -> str:
    peer_text = request.remote or ""
    settings = request.app[SETTINGS]
    proxies = settings.trusted_proxies
    peer = _address(peer_text) if proxies else None
    if peer is None or not _trusted(peer, proxies):
        return peer_text or "unknown"
    client = peer
    for hop in reversed(_hops(request, settings.proxy_header)):
        address = _address(hop)
        if address is None:
            break  # not an address: the proxy that passed it on is as far as we can tell
        client = address
        if not _trusted(address, proxies):
            break
    return str(client)


def client_address(request: web.Request) -> str:
    """The caller's address: the TCP peer, or behind trusted proxies the one they report.

    Worked out once per request and kept on it.
    """
    address = request.get(CLIENT_ADDRESS)
    if address is None:
        address = request[CLIENT_ADDRESS] = _resolve(request)
    return address
