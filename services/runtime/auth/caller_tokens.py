"""The caller's token for each service a call reaches, added to the call by the mesh channel.

A service that calls others on its caller's behalf (the edge for an HTTP request, the orchestrator
for a round) holds one `CallerTokens` and opens its mesh channel with it
(`open_mesh_channel(address, caller_tokens)`). For each call made while a caller is set
(services/runtime/principal.py), the channel's interceptor asks it for `authorization`: the
caller's token exchanged (RFC 8693) by the service's own client for the audience of the service
the method belongs to, found from the method path and the registry. So the callee sees the
caller's tenant and identity with the calling service in `act`, and no call site builds
credentials by hand.

A call that already carries `authorization` (a token of the service's own, a client's Basic
credentials passed on) or is made with no caller set goes as it is. Calls inside `acting_agent`
carry one more level: the agent's token as the exchange's actor token, so the callee sees the
user as subject and the agent as actor (seed 004's delegation chain). Minting that agent token is
the calling service's policy, given as `AgentTokens`.

Exchanged tokens are cached by the token client per (caller's token id, agent, audience) until
shortly before they expire, so a caller costs one exchange per callee, not one per call.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

import grpc

from services.runtime.auth.settings import service_audience
from services.runtime.auth.token_client import TokenClient
from services.runtime.context import setting
from services.runtime.principal import Caller, caller_var
from services.runtime.registry import SERVICES

# `macp.conversation.v1.ConversationService` -> `urn:macp:service:conversation`.
AUDIENCES: dict[str, str] = {
    grpc_service: service_audience(spec.name) for spec in SERVICES for grpc_service in spec.grpc_services
}


def audience_of(method: str) -> str | None:
    """The audience of the service that serves `method` (`/<package>.<Service>/<Method>`)."""
    return AUDIENCES.get(method[1 : method.rfind("/")])


@dataclass(frozen=True)
class ActingAgent:
    """An agent acting for the caller: the facts its agent token states."""

    agent_id: str
    owner_id: str
    capabilities: tuple[str, ...]


acting_agent_var: ContextVar[ActingAgent | None] = ContextVar("macp_acting_agent", default=None)


def acting_agent(agent: ActingAgent) -> AbstractContextManager[None]:
    """Calls made inside the block are the agent's, acting for the current caller."""
    return setting(acting_agent_var, agent)


class AgentTokens(Protocol):
    """How a service gets the token of an agent acting for a caller."""

    async def agent_token(self, caller: Caller, agent: ActingAgent) -> str: ...


class CallerTokens:
    """The value of `authorization` for a call on the current caller's behalf (module docstring)."""

    def __init__(self, client: TokenClient, agents: AgentTokens | None = None) -> None:
        self.client = client
        self._agents = agents

    async def authorization(self, method: str) -> str | None:
        """`Bearer <exchanged token>` for a call of `method`, or None: no caller, or a method of
        no service of the registry."""
        caller = caller_var.get()
        if caller is None or not caller.token:
            return None
        audience = audience_of(method)
        if audience is None:
            return None
        try:
            return f"Bearer {await self._exchanged(caller, audience)}"
        except grpc.aio.AioRpcError as exc:
            # The call fails with the exchange's status, saying that it was the exchange that failed.
            raise grpc.aio.AioRpcError(
                exc.code(),
                exc.initial_metadata(),
                exc.trailing_metadata(),
                f"exchanging the caller's token for {audience} failed: {exc.details()}",
            ) from None

    async def _exchanged(self, caller: Caller, audience: str) -> str:
        subject = caller.principal.token_id or caller.token
        agent = acting_agent_var.get()
        if agent is None or self._agents is None:
            return await self.client.exchange(subject, caller.token, audience)
        actor = await self._agents.agent_token(caller, agent)
        return await self.client.exchange(
            (subject, agent.agent_id), caller.token, audience, actor_token=actor
        )
