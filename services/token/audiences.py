"""Where a token may be used: `urn:macp:service:<registry name>` for each mesh service and
`urn:macp:edge` for the public edge. Audiences and RFC 8707 resources take the same URNs.

Who may hold a service audience: a token for a service port skips everything the edge does (its
rate limits per client, its checks), so only MACP's own INTERNAL clients get one: for themselves
(client credentials) or for a user they act for (token exchange, which is how the edge and the
orchestrator reach the services on a caller's behalf). A user signing in (password, refresh) and a
consumer, partner or third-party client get `urn:macp:edge` only, and reach the services through it.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.runtime.auth.settings import EDGE_AUDIENCE, SERVICE_AUDIENCE_PREFIX, service_audience
from services.runtime.registry import SERVICES
from services.token.oauth import oauth_error

DEFAULT_AUDIENCE = EDGE_AUDIENCE

TOKEN_SERVICE_AUDIENCE = service_audience("token")
KNOWN_AUDIENCES = frozenset({EDGE_AUDIENCE, *(service_audience(spec.name) for spec in SERVICES)})


def resolve(audiences: Iterable[str], resources: Iterable[str]) -> tuple[str, ...]:
    """The `aud` of a token asked for with these `audience` and `resource` values (deduplicated, in
    order); `urn:macp:edge` when none is named; invalid_target for a target MACP does not know."""
    wanted = list(dict.fromkeys([*audiences, *resources]))
    unknown = [target for target in wanted if target not in KNOWN_AUDIENCES]
    if unknown:
        raise oauth_error(
            "invalid_target",
            f"unknown audience {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_AUDIENCES))}",
        )
    return tuple(wanted) or (DEFAULT_AUDIENCE,)


def is_service(target: str) -> bool:
    return target.startswith(SERVICE_AUDIENCE_PREFIX)


def check_holder(targets: Iterable[str], *, client_class: str, user_sign_in: bool) -> None:
    """invalid_target unless these audiences may be issued here: a service audience only to an
    internal client, and never to a user's own sign-in (see the module docstring)."""
    services = [target for target in targets if is_service(target)]
    if not services:
        return
    if user_sign_in:
        raise oauth_error(
            "invalid_target",
            f"a user's sign-in gets {EDGE_AUDIENCE} only, not {', '.join(services)}: the services are "
            "reached through the edge, which exchanges the token for them",
        )
    if client_class != "internal":
        raise oauth_error(
            "invalid_target",
            f"a {client_class} client gets {EDGE_AUDIENCE} only, not {', '.join(services)}: service "
            "audiences are issued to MACP's internal clients",
        )
