"""Who an outside A2A agent is and the HTTP headers that authenticate MACP to it.

The agent is read from the conversation service on the caller's behalf (GetAgentRemote: the agent,
its remote, and its client secret sealed under `MACP_A2A_SEALING_KEY`, which this proxy holds), for
every turn, so a changed registration is used at once. Then, per `RemoteAgent.auth`:

NONE: nothing.

CLIENT_CREDENTIALS: a bearer token of the client registered with the remote side, from the remote's
own authorization server (services/runtime/client_credentials_tokens.py), kept per (agent id, etag);
the secret opened from its sealed form, bound to its tenant and agent.

TOKEN_EXCHANGE: the caller's token exchanged at MACP's token service for the remote as resource
(the remote's `audience`, or its card URL's origin), with this proxy's own token as actor
(services/runtime/exchanged_tokens.py): the remote sees the user, and the proxy and agent in `act`.

Anything that keeps the proxy from a credential is a `CredentialFailure` naming the agent.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import grpc
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.conversation.v1 import conversation_service_pb2_grpc as conversation_grpc

from services.runtime.a2a_remote_sealing import SEALING_KEY, associated_data
from services.runtime.auth.token_client import TokenClient
from services.runtime.client_credentials_tokens import ClientCredentialsTokens, ClientGrant, CredentialFailure
from services.runtime.exchanged_tokens import exchanged_token
from services.runtime.sealing import Sealer, SealError

# What the exchanged token lets the remote do at MACP: read the conversations it takes part in.
EXCHANGE_SCOPE = "conversations:read"


def exchange_audience(remote: conversation_pb.RemoteAgent) -> str:
    """The resource an exchanged token is addressed to: the remote's own, else its card's origin."""
    if remote.audience:
        return remote.audience
    parts = urlsplit(remote.card_url)
    return f"{parts.scheme}://{parts.netloc}"


class RemoteCredentials:
    def __init__(
        self,
        conversation: conversation_grpc.ConversationServiceStub,
        client: TokenClient,
        key: bytes | None,
        timeout_seconds: float,
    ) -> None:
        self._conversation = conversation
        self._client = client
        self._sealer = None if key is None else Sealer(key)
        self._tokens = ClientCredentialsTokens(timeout_seconds)
        self._timeout = timeout_seconds

    async def remote(self, agent_id: str) -> tuple[conversation_pb.Agent, bytes]:
        """The agent (with its remote) and its sealed client secret, as the caller may read them."""
        try:
            reply = await self._conversation.GetAgentRemote(
                conversation_pb.GetAgentRemoteRequest(id=agent_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise CredentialFailure(f"agent {agent_id}'s remote could not be read: {exc.details()}") from None
        return reply.agent, reply.sealed_client_secret

    async def headers(self, agent: conversation_pb.Agent, sealed: bytes) -> dict[str, str]:
        remote = agent.remote
        who = f"remote agent {agent.name}"
        if remote.auth == conversation_pb.REMOTE_AUTH_TOKEN_EXCHANGE:
            token = await exchanged_token(self._client, exchange_audience(remote), EXCHANGE_SCOPE, who)
            return {"Authorization": f"Bearer {token}"}
        if remote.auth == conversation_pb.REMOTE_AUTH_CLIENT_CREDENTIALS:
            grant = remote.client_credentials
            secret = self._opened(agent, sealed, who)
            token = await self._tokens.token(
                (agent.id, agent.etag),
                who,
                ClientGrant(grant.token_url, grant.client_id, grant.scope),
                secret,
            )
            return {"Authorization": f"Bearer {token}"}
        return {}

    def _opened(self, agent: conversation_pb.Agent, sealed: bytes, who: str) -> str:
        if not sealed or self._sealer is None:
            missing = "it has none stored" if not sealed else f"{SEALING_KEY} is not set on the agent proxy"
            raise CredentialFailure(f"the client secret of {who} cannot be opened: {missing}")
        try:
            return self._sealer.open(sealed, associated_data(agent.tenant_id, agent.id)).decode()
        except SealError:
            raise CredentialFailure(f"the client secret of {who} does not open with {SEALING_KEY}") from None
