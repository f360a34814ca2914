"""gRPC surface of the conversation service: proto in, domain call, proto out.

RPCs not overridden here are inherited from the generated base and answer UNIMPLEMENTED
(the rest of this service is its own issue).
"""

from __future__ import annotations

from macp.conversation.v1 import conversation_service_pb2 as pb
from macp.conversation.v1 import conversation_service_pb2_grpc as pb_grpc

from services.conversation.agents import Agents
from services.runtime.context import RpcContext
from services.runtime.principal import current_principal


class ConversationServicer(pb_grpc.ConversationServiceServicer):
    def __init__(self, agents: Agents) -> None:
        self._agents = agents

    async def CreateAgent(
        self,
        request: pb.CreateAgentRequest,
        context: RpcContext,
    ) -> pb.CreateAgentResponse:
        agent = await self._agents.create(current_principal(), request.agent)
        return pb.CreateAgentResponse(agent=agent)

    async def GetAgent(self, request: pb.GetAgentRequest, context: RpcContext) -> pb.GetAgentResponse:
        return pb.GetAgentResponse(agent=await self._agents.get(current_principal(), request.id))
