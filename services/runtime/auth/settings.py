"""What every verifying process reads about tokens, and the audience names tokens are bound to."""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime.auth.external import ExternalIssuer, external_issuers_from_env
from services.runtime.auth.jwks import DEFAULT_REFRESH_SECONDS, DEFAULT_UNKNOWN_KID_REFRESH_SECONDS
from services.runtime.auth.jwt import DEFAULT_MAX_DELEGATION_DEPTH
from services.runtime.settings import Env

# The token service reads the same variable with the same default: both must agree on `iss`.
DEFAULT_ISSUER = "http://127.0.0.1:8080"
EDGE_AUDIENCE = "urn:macp:edge"
# Every scope a service checks on a user's behalf: what a user's client may be granted, and what
# the edge's own client may pass on when it exchanges a user's token for a service. A service that
# checks a new scope adds it here (each service documents its own in its `service.py`).
# `audit:read` reaches only a tenant's admin users (services/token/scopes.py `for_user`).
USER_SCOPES = (
    "conversations:read",
    "conversations:write",
    "usage:read",
    "audit:read",
    "tools:read",
    "tools:call",
    "tools:admin",
)


SERVICE_AUDIENCE_PREFIX = "urn:macp:service:"
# Where MCP clients reach the tool gateway on the front listener (services/runtime/registry.py).
MCP_PATH = "/mcp"
# What a token for the MCP endpoint may carry of the user scopes: listing and calling tools.
MCP_SCOPES = ("tools:read", "tools:call")


def mcp_resource(issuer: str) -> str:
    """The URL of the MCP endpoint, and so the `aud` of tokens for it (RFC 8707): the issuer is
    the front listener's public base URL, and the endpoint is at /mcp there."""
    return issuer.rstrip("/") + MCP_PATH


def service_audience(name: str) -> str:
    """The `aud` of tokens for the mesh service `name` (its registry name)."""
    return f"{SERVICE_AUDIENCE_PREFIX}{name}"


@dataclass(frozen=True)
class AuthSettings:
    issuer: str
    max_delegation_depth: int
    jwks_refresh_seconds: float
    jwks_unknown_kid_refresh_seconds: float
    # Outside OpenID Connect issuers whose tokens the edge accepts and the token service exchanges.
    external_issuers: tuple[ExternalIssuer, ...] = ()

    @classmethod
    def from_env(cls, env: Env) -> AuthSettings:
        return cls(
            issuer=env.url("MACP_TOKEN_ISSUER", ("http", "https"), DEFAULT_ISSUER) or DEFAULT_ISSUER,
            max_delegation_depth=env.integer(
                "MACP_TOKEN_MAX_DELEGATION_DEPTH", DEFAULT_MAX_DELEGATION_DEPTH, minimum=0, maximum=8
            ),
            jwks_refresh_seconds=env.number(
                "MACP_JWKS_REFRESH_SECONDS", DEFAULT_REFRESH_SECONDS, minimum=1.0
            ),
            jwks_unknown_kid_refresh_seconds=env.number(
                "MACP_JWKS_UNKNOWN_KID_REFRESH_SECONDS", DEFAULT_UNKNOWN_KID_REFRESH_SECONDS, minimum=0.1
            ),
            external_issuers=external_issuers_from_env(env),
        )
