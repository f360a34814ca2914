"""The credential an upstream MCP server gets, per its registration (`UpstreamAuth`).

NONE: nothing.

TOKEN_EXCHANGE: the current caller's token exchanged (RFC 8693) by the gateway's own client for the
server's URL as resource (RFC 8707), with the gateway's own token as the actor
(services/runtime/exchanged_tokens.py): the upstream sees the user as `sub`, the gateway (and, when
an agent called, the agent) in `act`, and a token addressed to itself alone.

STATIC: the registration's one header, its value opened from its sealed form (upstream_secrets.py).

CLIENT_CREDENTIALS: a bearer token the gateway's client at the server's own authorization server
gets (client_credentials.py), the client secret opened from its sealed form.

STATIC and CLIENT_CREDENTIALS credentials are the gateway's, the same whoever calls: the upstream
learns nothing of the caller from them.
"""

from __future__ import annotations

from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.runtime.auth.token_client import TokenClient
from services.runtime.client_credentials_tokens import CredentialFailure
from services.runtime.exchanged_tokens import exchanged_token
from services.tool_gateway.client_credentials import ClientCredentialsTokens
from services.tool_gateway.upstream import UpstreamFailure
from services.tool_gateway.upstream_secrets import UpstreamSecrets

# The scope the upstream's token carries: it may only call tools, as the caller may.
UPSTREAM_SCOPE = "tools:call"


class UpstreamTokens:
    def __init__(
        self, client: TokenClient, secrets: UpstreamSecrets, client_credentials: ClientCredentialsTokens
    ) -> None:
        self._client = client
        self._secrets = secrets
        self._client_credentials = client_credentials

    async def headers(self, server: pb.ToolServer) -> dict[str, str]:
        """The HTTP headers that authenticate the gateway's requests to `server` for the caller."""
        if server.auth == pb.UPSTREAM_AUTH_TOKEN_EXCHANGE:
            return {"authorization": f"Bearer {await self._exchanged(server)}"}
        if server.auth == pb.UPSTREAM_AUTH_STATIC:
            return {server.static_credential.header: await self._secrets.secret(server)}
        if server.auth == pb.UPSTREAM_AUTH_CLIENT_CREDENTIALS:
            secret = await self._secrets.secret(server)
            return {"authorization": f"Bearer {await self._client_credentials.token(server, secret)}"}
        return {}

    async def _exchanged(self, server: pb.ToolServer) -> str:
        try:
            who = f"tool server {server.name}"
            return await exchanged_token(self._client, server.url, UPSTREAM_SCOPE, who)
        except CredentialFailure as failure:
            raise UpstreamFailure("credentials", failure.message) from None
