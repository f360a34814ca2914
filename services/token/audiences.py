"""Where a token may be used: `urn:macp:service:<registry name>` for each mesh service and
`urn:macp:edge` for the public edge. Audiences and RFC 8707 resources take the same URNs.

Who may hold a service audience: a token for a service port skips everything the edge does (its
rate limits per client, its checks), so only MACP's own INTERNAL clients get one: for themselves
(client credentials) or for a user they act for (token exchange, which is how the edge and the
orchestrator reach the services on a caller's behalf). A user signing in (password, refresh) and a
consumer, partner or third-party client get `urn:macp:edge` only, and reach the services through it.

Outside resources: an absolute http(s) URL is an RFC 8707 resource outside the mesh, an upstream
MCP server the tool gateway calls. Only an internal client gets one, by token exchange: the
gateway exchanges its caller's token for the server's own URL, so the upstream gets a token it can
check is addressed to itself and no MACP service accepts (MCP's authorization rules forbid passing
the caller's own token through).

Public resources: MACP's own URLs that outside clients call directly, as they call the edge: the
tool gateway's MCP endpoint (`<issuer>/mcp`, services/runtime/auth/settings.py). Any client may get
a token for one, by its RFC 8707 `resource` (what MCP clients send) or `audience`; such a token is
accepted there alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from services.runtime.auth.settings import EDGE_AUDIENCE, SERVICE_AUDIENCE_PREFIX, service_audience
from services.runtime.registry import SERVICES
from services.token.oauth import oauth_error

DEFAULT_AUDIENCE = EDGE_AUDIENCE

TOKEN_SERVICE_AUDIENCE = service_audience("token")
KNOWN_AUDIENCES = frozenset({EDGE_AUDIENCE, *(service_audience(spec.name) for spec in SERVICES)})


def resolve(
    audiences: Iterable[str],
    resources: Iterable[str],
    *,
    outside: bool = False,
    public: frozenset[str] = frozenset(),
) -> tuple[str, ...]:
    """The `aud` of a token asked for with these `audience` and `resource` values (deduplicated, in
    order); `urn:macp:edge` when none is named; invalid_target for a target MACP does not know.
    `outside`: outside resources may be named (a token exchange; see the module docstring).
    `public`: the public resources (the MCP endpoint's URL), known like the edge."""
    wanted = list(dict.fromkeys([*audiences, *resources]))
    known = KNOWN_AUDIENCES | public
    unknown = [target for target in wanted if target not in known and not (outside and is_outside(target))]
    if unknown:
        raise oauth_error(
            "invalid_target",
            f"unknown audience {', '.join(unknown)}; known: {', '.join(sorted(known))}",
        )
    return tuple(wanted) or (DEFAULT_AUDIENCE,)


def is_service(target: str) -> bool:
    return target.startswith(SERVICE_AUDIENCE_PREFIX)


def is_outside(target: str) -> bool:
    """An absolute http(s) URL without a fragment (RFC 8707 section 2): a resource outside the mesh."""
    parts = urlsplit(target)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.fragment


def check_holder(
    targets: Iterable[str], *, client_class: str, user_sign_in: bool, public: frozenset[str] = frozenset()
) -> None:
    """invalid_target unless these audiences may be issued here: a service audience only to an
    internal client, and never to a user's own sign-in; a public resource to anyone (see the
    module docstring)."""
    services = [
        target for target in targets if target not in public and (is_service(target) or is_outside(target))
    ]
    if not services:
        return
    if user_sign_in:
        raise oauth_error(
            "invalid_target",
            f"a user's sign-in gets {EDGE_AUDIENCE} only (and the MCP endpoint), "
            f"not {', '.join(services)}: the services are "
            "reached through the edge, which exchanges the token for them",
        )
    if client_class != "internal":
        raise oauth_error(
            "invalid_target",
            f"a {client_class} client gets {EDGE_AUDIENCE} only (and the MCP endpoint), "
            f"not {', '.join(services)}: service "
            "audiences are issued to MACP's internal clients",
        )
