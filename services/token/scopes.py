"""Scope policy: which scopes a request may get, and which ones only MACP's own clients may hold."""

from __future__ import annotations

from collections.abc import Iterable

from services.token.oauth import oauth_error

ADMIN = "macp:admin"
AGENT_TOKEN = "macp:agent-token"
# Only INTERNAL clients may hold these, and only a client_credentials token carries them: a user
# signing in through an internal tool does not become an administrator.
PRIVILEGED = frozenset({ADMIN, AGENT_TOKEN})
# Scopes a user never holds but an internal service may add when it exchanges a user's token:
# the orchestrator spends provider tokens (`agents:generate`) and meters them (`usage:write`) on
# the user's behalf. The token stays the user's (their tenant, their identity, the service and the
# agent in `act`), so metering still scopes every hold to that tenant; and since the user's own
# tokens never carry them, a user cannot call the agent proxy or commit and release usage directly.
# Only INTERNAL clients may be registered with them, and no token issued through a user-facing
# client (consumer, partner, third party) or to a user signing in carries them, whatever its client.
SERVICE_HELD = frozenset({"agents:generate", "usage:write"})
INTERNAL = "internal"
# Reading a tenant's audit log (TokenService.ListAuditEvents): a user's token carries it only if
# the user is an admin of its tenant, whatever its client may be granted.
AUDIT_READ = "audit:read"
# OpenID Connect (Core 3.1.2.1): the request is an authentication request, and its code's redemption
# adds an ID token (id_tokens.py). Any client that may use the authorization code grant may ask for
# it there, whatever scopes it registered; the password and client credentials grants issue no ID
# token and refuse it (invalid_scope) rather than grant a scope that does nothing.
OPENID = "openid"


def parse(scope: str) -> tuple[str, ...]:
    """A space-delimited scope string (RFC 6749 3.3) as an ordered, duplicate-free tuple."""
    return tuple(dict.fromkeys(scope.split()))


def unprivileged(scopes: Iterable[str]) -> tuple[str, ...]:
    return tuple(scope for scope in scopes if scope not in PRIVILEGED)


def for_class(client_class: str, scopes: Iterable[str]) -> tuple[str, ...]:
    """`scopes` less the service-held ones unless `client_class` is internal: what a token issued
    through a client of that class may carry of them."""
    if client_class == INTERNAL:
        return tuple(scopes)
    return tuple(scope for scope in scopes if scope not in SERVICE_HELD)


def for_user(client_scopes: Iterable[str], *, admin: bool) -> tuple[str, ...]:
    """What a user signing in through a client may get: the client's unprivileged scopes, never a
    service-held one, and `audit:read` only if the user is an admin of its tenant."""
    allowed = [scope for scope in unprivileged(client_scopes) if scope not in SERVICE_HELD]
    return tuple(scope for scope in allowed if admin or scope != AUDIT_READ)


def narrow(requested: tuple[str, ...], allowed: Iterable[str]) -> tuple[str, ...]:
    """`requested` if it is within `allowed`, else invalid_scope naming the excess; everything
    allowed when nothing is requested. The order of `allowed` is kept for the default."""
    allowed = tuple(allowed)
    if not requested:
        return allowed
    excess = [scope for scope in requested if scope not in allowed]
    if excess:
        raise oauth_error("invalid_scope", f"not grantable here: {' '.join(excess)}")
    return requested


def split_openid(requested: tuple[str, ...]) -> tuple[bool, tuple[str, ...]]:
    """Whether `requested` has `openid`, and the rest of it, for the authorization code grant."""
    return OPENID in requested, tuple(scope for scope in requested if scope != OPENID)


def refuse_openid(requested: tuple[str, ...], grant_type: str) -> None:
    """invalid_scope if `requested` has `openid`, which only the authorization code grant grants."""
    if OPENID in requested:
        raise oauth_error(
            "invalid_scope",
            f"{OPENID} is only for the authorization_code grant (the sign-in page); the {grant_type} "
            "grant issues no ID token",
        )


def intersection(first: Iterable[str], *others: Iterable[str]) -> tuple[str, ...]:
    """The scopes in every argument, in the order of the first."""
    rest = [set(other) for other in others]
    return tuple(scope for scope in first if all(scope in other for other in rest))


def service_held(
    client_class: str, client_scopes: Iterable[str], actor_scopes: Iterable[str] | None
) -> tuple[str, ...]:
    """The service-held scopes an exchange adds for an internal client (within the actor's too)."""
    if client_class != INTERNAL:
        return ()
    held = tuple(scope for scope in client_scopes if scope in SERVICE_HELD)
    return held if actor_scopes is None else intersection(held, actor_scopes)
