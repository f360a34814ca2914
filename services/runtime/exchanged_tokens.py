"""A caller's token exchanged for an outside resource, for a service that calls it on the caller's
behalf: the tool gateway for an upstream MCP server registered with TOKEN_EXCHANGE, the agent proxy
for an outside A2A agent with REMOTE_AUTH_TOKEN_EXCHANGE.

The current caller's token (services/runtime/principal.py) is exchanged (RFC 8693) by the service's
own client for the resource's URL (RFC 8707), with the service's own token as the actor: the
outside side sees the user as `sub`, the service (and, when an agent called, the agent) in `act`,
and a token addressed to itself alone. The caller's token itself never leaves the mesh. Tokens are
cached by the token client per (caller's token id, resource).
"""

from __future__ import annotations

import grpc

from services.runtime.auth.settings import service_audience
from services.runtime.auth.token_client import TokenClient
from services.runtime.client_credentials_tokens import CredentialFailure
from services.runtime.errors import Unavailable
from services.runtime.principal import current_caller


async def exchanged_token(client: TokenClient, resource: str, scope: str, who: str) -> str:
    """The current caller's token exchanged for `resource` with `scope`; CredentialFailure naming
    `who` (the outside side) and what the token service said when none could be had."""
    caller = current_caller()
    try:
        own = await client.own_token(service_audience("token"), "")
        return await client.exchange(
            (caller.principal.token_id or caller.token, resource),
            caller.token,
            resource,
            actor_token=own,
            scope=scope,
        )
    except (grpc.aio.AioRpcError, Unavailable) as exc:
        detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc.message
        raise CredentialFailure(f"no token for {who} could be had: {detail}") from None
