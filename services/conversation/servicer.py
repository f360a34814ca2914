"""gRPC surface of the conversation service: proto in, domain call, proto out."""

from __future__ import annotations

from macp.conversation.v1 import conversation_service_pb2 as pb
from macp.conversation.v1 import conversation_service_pb2_grpc as pb_grpc

from services.conversation.agents import Agents
from services.conversation.archives import Archives
from services.conversation.conversations import Conversations
from services.conversation.messages import Messages
from services.runtime.context import RpcContext
from services.runtime.principal import current_principal


class ConversationServicer(pb_grpc.ConversationServiceServicer):
    def __init__(
        self, agents: Agents, conversations: Conversations, messages: Messages, archives: Archives
    ) -> None:
        self._agents = agents
        self._conversations = conversations
        self._messages = messages
        self._archives = archives

    # --- agents ---------------------------------------------------------------------------------

    async def CreateAgent(
        self, request: pb.CreateAgentRequest, context: RpcContext
    ) -> pb.CreateAgentResponse:
        return pb.CreateAgentResponse(agent=await self._agents.create(current_principal(), request.agent))

    async def GetAgent(self, request: pb.GetAgentRequest, context: RpcContext) -> pb.GetAgentResponse:
        return pb.GetAgentResponse(agent=await self._agents.get(current_principal(), request.id))

    async def GetAgentRemote(
        self, request: pb.GetAgentRemoteRequest, context: RpcContext
    ) -> pb.GetAgentRemoteResponse:
        agent, sealed = await self._agents.remote(current_principal(), request.id)
        return pb.GetAgentRemoteResponse(agent=agent, sealed_client_secret=sealed)

    async def ListAgents(self, request: pb.ListAgentsRequest, context: RpcContext) -> pb.ListAgentsResponse:
        return await self._agents.list(current_principal(), request)

    async def UpdateAgent(
        self, request: pb.UpdateAgentRequest, context: RpcContext
    ) -> pb.UpdateAgentResponse:
        agent = await self._agents.update(current_principal(), request.agent, request.update_mask)
        return pb.UpdateAgentResponse(agent=agent)

    async def DeleteAgent(
        self, request: pb.DeleteAgentRequest, context: RpcContext
    ) -> pb.DeleteAgentResponse:
        await self._agents.delete(current_principal(), request.id, request.etag)
        return pb.DeleteAgentResponse()

    # --- conversations --------------------------------------------------------------------------

    async def CreateConversation(
        self, request: pb.CreateConversationRequest, context: RpcContext
    ) -> pb.CreateConversationResponse:
        conversation = await self._conversations.create(current_principal(), request.conversation)
        return pb.CreateConversationResponse(conversation=conversation)

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: RpcContext
    ) -> pb.GetConversationResponse:
        conversation = await self._conversations.get(current_principal(), request.id)
        return pb.GetConversationResponse(conversation=conversation)

    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: RpcContext
    ) -> pb.ListConversationsResponse:
        return await self._conversations.list(current_principal(), request)

    async def UpdateConversation(
        self, request: pb.UpdateConversationRequest, context: RpcContext
    ) -> pb.UpdateConversationResponse:
        conversation = await self._conversations.update(
            current_principal(), request.conversation, request.update_mask
        )
        return pb.UpdateConversationResponse(conversation=conversation)

    async def DeleteConversation(
        self, request: pb.DeleteConversationRequest, context: RpcContext
    ) -> pb.DeleteConversationResponse:
        await self._conversations.delete(current_principal(), request.id, request.etag)
        return pb.DeleteConversationResponse()

    # --- messages -------------------------------------------------------------------------------

    async def AppendMessage(
        self, request: pb.AppendMessageRequest, context: RpcContext
    ) -> pb.AppendMessageResponse:
        message, created = await self._messages.append(current_principal(), request.message)
        return pb.AppendMessageResponse(message=message, created=created)

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: RpcContext
    ) -> pb.ListMessagesResponse:
        return await self._messages.list(current_principal(), request)

    # --- archives -------------------------------------------------------------------------------

    async def ArchiveConversation(
        self, request: pb.ArchiveConversationRequest, context: RpcContext
    ) -> pb.ArchiveConversationResponse:
        return await self._archives.archive(current_principal(), request)

    async def ListArchives(
        self, request: pb.ListArchivesRequest, context: RpcContext
    ) -> pb.ListArchivesResponse:
        return await self._archives.list(current_principal(), request)

    async def GetArchive(self, request: pb.GetArchiveRequest, context: RpcContext) -> pb.GetArchiveResponse:
        return await self._archives.get(current_principal(), request)
