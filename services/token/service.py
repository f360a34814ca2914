"""Wiring of the token service: its registry entry, its servicer, its migrations.

It does not use the runtime's default JWT authenticator: IssueToken, ExchangeToken, RegisterClient,
GetJwks, Introspect and Revoke must answer callers who have no token yet (they authenticate the
client in the request body, or for Introspect in `authorization: Basic`: credentials.py), and the
JWKS every other verifier needs comes from here. Its
privileged RPCs check the bearer token themselves (`guard.py`), against its own key store:
`macp:admin` for the admin RPCs, `macp:agent-token` for IssueAgentToken, `audit:read` (a tenant
admin's) for ListAuditEvents.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.context import RpcContext
from services.runtime.principal import Principal
from services.runtime.registry import service
from services.runtime.resources import Resources
from services.runtime.server import ServiceDefinition
from services.runtime.settings import Env
from services.token.domain import TokenDomain
from services.token.servicer import TokenServicer
from services.token.settings import TokenSettings


class OwnChecks:
    """Admits every call with an empty principal: each RPC authenticates its caller itself (client
    credentials in the request, or the bearer guard), so no handler here reads the principal."""

    async def authenticate(self, method: str, context: RpcContext) -> Principal:
        return Principal()


async def register(server: grpc.aio.Server, resources: Resources, env: Env) -> None:
    settings = TokenSettings.from_env(env)
    redis_settings = resources.settings.redis
    if redis_settings is None:
        raise RuntimeError("the token service declares a redis dependency in the registry")
    domain = await TokenDomain.start(
        settings, resources.require_db(), resources.require_redis(), redis_settings.key_prefix
    )
    resources.on_close(domain.stop)
    pb_grpc.add_TokenServiceServicer_to_server(TokenServicer(domain), server)


DEFINITION = ServiceDefinition(
    spec=service("token"),
    register=register,
    migrations_dir=Path(__file__).parent / "migrations",
    authenticator=OwnChecks(),
)
