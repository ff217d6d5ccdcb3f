"""The caller's network address, as rate limits see it.

The peer's address, unless the peer is a trusted proxy (``SHOPVAULT_TRUSTED_PROXIES``): then
``X-Forwarded-For``, read from the right (the hop the proxy itself appended) over all its header
lines, skipping trusted proxies. Whatever a client wrote to the left of that is not believed.
IPv6 addresses are limited per /64: one subscriber usually holds a whole /64.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"
MAX_HOP_LENGTH = 64
IPV6_LIMIT_PREFIX = 64


def _parse(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _hops(header_lines: Iterable[str]) -> list[str]:
    # Several header lines are one list, in order (RFC 9110, 5.3).
    return [hop.strip() for line in header_lines for hop in line.split(",") if hop.strip()]


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str:
    """The address of the client that sent the request (see the module docstring)."""
    address = peer or UNKNOWN

    def is_trusted(text: str) -> bool:
        parsed = _parse(text)
        return parsed is not None and any(parsed in network for network in trusted)

    if not trusted or not forwarded_for or not is_trusted(address):
        return address
    for hop in reversed(_hops(forwarded_for)):
        address = hop[:MAX_HOP_LENGTH]
        if not is_trusted(hop):
            break
    return address


def limit_key(address: str) -> str:
    """The part of an address that a rate limit counts: IPv4 as is, IPv6 by its /64."""
    parsed = _parse(address)
    if parsed is None:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((int(parsed), IPV6_LIMIT_PREFIX), strict=False)
        return str(network)
    return str(parsed)
