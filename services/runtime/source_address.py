"""The address a request is counted by before it is authenticated: the same for every HTTP
listener behind Envoy's front listener (the edge, and the tool gateway's `/mcp`).

The front listener has `use_remote_address` and no trusted hops (services/stack/envoy_config.py),
so Envoy appends the address of the peer it saw to `x-forwarded-for`: the last entry is the one
Envoy set, whatever a client wrote before it. A request that did not come through Envoy (a test, a
bench) has none, and its TCP peer is used. IPv6 sources are counted by their /64, the block one
subscriber usually holds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Final

_FORWARDED_FOR: Final = b"x-forwarded-for"


def source_of(forwarded_for: bytes | None, peer: str | None) -> str:
    """The address a request is counted by: the last `x-forwarded-for` entry (Envoy's), else the
    TCP peer; an IPv6 address as its /64."""
    text = peer or "unknown"
    if forwarded_for:
        text = forwarded_for.decode("latin-1").rpartition(",")[2].strip() or text
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text[:64]  # not an address (a unix socket's name): counted as it is, bounded
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def scope_source(scope: Mapping[str, Any]) -> str:
    """`source_of` an ASGI HTTP scope: its last `x-forwarded-for` header, else the client the server
    saw."""
    forwarded = None
    for name, value in scope.get("headers", ()):
        if name == _FORWARDED_FOR:
            forwarded = value
    client = scope.get("client")
    return source_of(forwarded, client[0] if client else None)
