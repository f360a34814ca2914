"""Wiring of the token service: its registry entry, its start hook, its migrations, its checks.

It does not use the runtime's default JWT authenticator: IssueToken, ExchangeToken, RegisterClient,
GetJwks, Introspect and Revoke must answer callers who have no token yet (they authenticate the
client in the request body, or for Introspect in `authorization: Basic`: credentials.py), and the
JWKS every other verifier needs comes from here. Its
privileged RPCs check the bearer token themselves (`guard.py`), against its own key store:
`macp:admin` for the admin RPCs, `macp:agent-token` for IssueAgentToken, `audit:read` (a tenant
admin's) for ListAuditEvents.

`start` builds the domain (making the first signing key if there is none and refilling Redis's
revocations), adds the servicer, and after the server has drained stops the refreshes of the
outside issuers' keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.context import RpcContext
from services.runtime.principal import Principal
from services.runtime.registry import service
from services.runtime.server import ServiceContext, ServiceDefinition
from services.token.domain import TokenDomain
from services.token.servicer import TokenServicer
from services.token.settings import TokenSettings


class OwnChecks:
    """Admits every call with an empty principal: each RPC authenticates its caller itself (client
    credentials in the request, or the bearer guard), so no handler here reads the principal."""

    async def authenticate(self, method: str, context: RpcContext) -> Principal:
        return Principal()


SPEC = service("token")


@asynccontextmanager
async def start(context: ServiceContext) -> AsyncIterator[None]:
    settings = TokenSettings.from_env(context.env)
    resources = context.resources
    domain = await TokenDomain.start(
        settings, resources.require_db(), resources.require_redis(), resources.redis_key_prefix
    )
    try:
        pb_grpc.add_TokenServiceServicer_to_server(TokenServicer(domain), context.server)
        yield
    finally:
        await domain.stop()


def method_scopes() -> dict[str, str]:
    """None: every RPC checks its caller itself (OwnChecks), so the interceptor requires no scope."""
    return {}


DEFINITION = ServiceDefinition(
    spec=SPEC,
    start=start,
    own_settings=TokenSettings.from_env,
    migrations_dir=Path(__file__).parent / "migrations",
    method_scopes=method_scopes(),
    authenticator=OwnChecks(),
)
