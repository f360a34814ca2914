"""Access tokens of CLIENT_CREDENTIALS servers: the gateway's client at the server's own
authorization server asks for one (services/runtime/client_credentials_tokens.py), with the
registration's scope and RFC 8707 resource, per registration (server id and etag). No token is an
`UpstreamFailure("credentials")` naming the server and what its authorization server said."""

from __future__ import annotations

import time
from collections.abc import Callable

from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.runtime.client_credentials_tokens import ClientCredentialsTokens as Tokens
from services.runtime.client_credentials_tokens import ClientGrant, CredentialFailure
from services.tool_gateway.upstream import UpstreamFailure


class ClientCredentialsTokens:
    def __init__(self, timeout_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._tokens = Tokens(timeout_seconds, clock)

    async def token(self, server: pb.ToolServer, secret: str) -> str:
        grant = server.client_credentials
        try:
            return await self._tokens.token(
                (server.id, server.etag),
                f"tool server {server.name}",
                ClientGrant(grant.token_url, grant.client_id, grant.scope, grant.resource),
                secret,
            )
        except CredentialFailure as failure:
            raise UpstreamFailure("credentials", failure.message) from None
