"""Where a webhook may be delivered: never to an internal address (SSRF).

A subscriber names any URL; the orchestrator POSTs to it from inside the deployment, where the
cloud's metadata endpoint (169.254.169.254), the mesh, the databases and every private network
answer. So a delivery goes only to a host whose every address is global: the conversation service
refuses a URL whose host is a literal internal address when it is subscribed, and the deliverer
resolves the host before each POST and refuses it when any address it resolves to is internal (a
name may point inward, and may change). Loopback is the one exception, for a laptop's receivers
(`MACP_WEBHOOKS_ALLOW_LOOPBACK_HTTP`, on for `macp up` and tests, off in a deployment).

What is left: a name that resolves to a global address for the check and an internal one for the
connection a moment later (DNS rebinding) would get through; pinning the connection to the checked
address (with the TLS name kept) closes that, and is not done here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from services.runtime.settings import Env

ALLOW_LOOPBACK = "MACP_WEBHOOKS_ALLOW_LOOPBACK_HTTP"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def allow_loopback(env: Env) -> bool:
    return env.choice(ALLOW_LOOPBACK, "false", ("true", "false")) == "true"


def refusal(address: Address, *, loopback_allowed: bool) -> str | None:
    """Why a delivery may not go to `address`, or None when it may."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    address = mapped or address
    if address.is_loopback:
        return None if loopback_allowed else f"{address} is a loopback address"
    if not address.is_global or address.is_multicast:
        return f"{address} is an internal address (private, link-local, reserved or shared)"
    return None


def literal_address(host: str) -> Address | None:
    """The host as an IP address when it is one (`[::1]` without its brackets too), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def host_refusal(host: str, port: int, *, loopback_allowed: bool) -> str | None:
    """Why a delivery may not go to `host` (resolved now, every address checked), or None."""
    literal = literal_address(host)
    if literal is not None:
        return refusal(literal, loopback_allowed=loopback_allowed)
    try:
        answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"{host} does not resolve: {exc}"
    for _family, _type, _proto, _name, sockaddr in answers:
        reason = refusal(ipaddress.ip_address(sockaddr[0]), loopback_allowed=loopback_allowed)
        if reason is not None:
            return f"{host} resolves to {reason}"
    return None
