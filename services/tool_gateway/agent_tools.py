"""Which tools the calling agent may use: those its agent resource names in `allowed_tools`
(`<server>__<tool>`, or `<server>__*` for all of a server's), read from the conversation service
on the caller's behalf. A call whose token names no agent (a user, an MCP client) is bounded by its
scopes alone. A tool an agent may not use is absent from its catalogue and refused on call."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from macp.common.v1 import principal_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.conversation.v1 import conversation_service_pb2_grpc as conversation_grpc

from services.runtime.errors import relayed
from services.runtime.principal import Principal
from services.tool_gateway.catalogue import split_name

Allowed = Callable[[str], bool]


def acting_agent_id(principal: Principal) -> str | None:
    """The agent acting for the caller, if any (the most recent agent of its `act` chain)."""
    for actor in principal.actor_chain:
        if actor.type == principal_pb2.ACTOR_TYPE_AGENT:
            return actor.id
    return None


def allow_list(names: list[str]) -> Allowed:
    exact = {name for name in names if not name.endswith("__*")}
    servers = {name[: -len("__*")] for name in names if name.endswith("__*")}
    return lambda tool: tool in exact or split_name(tool)[0] in servers


class AgentTools:
    def __init__(self, conversation: conversation_grpc.ConversationServiceStub, timeout: float) -> None:
        self._conversation = conversation
        self._timeout = timeout

    async def allowed(self, principal: Principal) -> Allowed | None:
        """The calling agent's allow-list; None when no agent acts (every tool, by scope)."""
        agent_id = acting_agent_id(principal)
        if agent_id is None:
            return None
        try:
            reply = await self._conversation.GetAgent(
                conversation_pb.GetAgentRequest(id=agent_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            # Without the agent's allow-list nothing is allowed: the refusal says why.
            raise relayed(exc, f"reading agent {agent_id}'s allowed tools") from None
        return allow_list(list(reply.agent.allowed_tools))
