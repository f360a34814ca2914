"""Where a token may be used: `urn:macp:service:<registry name>` for each mesh service and
`urn:macp:edge` for the public edge. Audiences and RFC 8707 resources take the same URNs."""

from __future__ import annotations

from collections.abc import Iterable

from services.runtime.auth.settings import EDGE_AUDIENCE, service_audience
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
