"""gRPC surface of the tool gateway: proto in, domain call, proto out."""

from __future__ import annotations

from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2_grpc as pb_grpc

from services.runtime.context import RpcContext
from services.runtime.errors import PermissionDenied
from services.runtime.principal import current_principal
from services.tool_gateway.agent_tools import AgentTools, acting_agent_id
from services.tool_gateway.catalogue import Catalogue
from services.tool_gateway.server_store import ServerStore
from services.tool_gateway.servers import ToolServers
from services.tool_gateway.tool_calls import ToolCalls


class ToolGatewayServicer(pb_grpc.ToolGatewayServiceServicer):
    def __init__(
        self,
        servers: ToolServers,
        store: ServerStore,
        catalogue: Catalogue,
        calls: ToolCalls,
        agent_tools: AgentTools,
        max_servers: int,
    ) -> None:
        self._servers = servers
        self._store = store
        self._catalogue = catalogue
        self._calls = calls
        self._agent_tools = agent_tools
        self._max_servers = max_servers

    async def CreateToolServer(
        self, request: pb.CreateToolServerRequest, context: RpcContext
    ) -> pb.CreateToolServerResponse:
        return pb.CreateToolServerResponse(
            tool_server=await self._servers.create(current_principal(), request.tool_server)
        )

    async def GetToolServer(
        self, request: pb.GetToolServerRequest, context: RpcContext
    ) -> pb.GetToolServerResponse:
        return pb.GetToolServerResponse(tool_server=await self._servers.get(current_principal(), request.id))

    async def ListToolServers(
        self, request: pb.ListToolServersRequest, context: RpcContext
    ) -> pb.ListToolServersResponse:
        return await self._servers.list(current_principal(), request)

    async def DeleteToolServer(
        self, request: pb.DeleteToolServerRequest, context: RpcContext
    ) -> pb.DeleteToolServerResponse:
        await self._servers.delete(current_principal(), request.id, request.etag)
        self._catalogue.forget(request.id)
        return pb.DeleteToolServerResponse()

    async def ListTools(self, request: pb.ListToolsRequest, context: RpcContext) -> pb.ListToolsResponse:
        principal = current_principal()
        allowed = await self._agent_tools.allowed(principal)
        servers = await self._store.all_of(principal.tenant_id, self._max_servers)
        catalogue = await self._catalogue.tools(servers)
        if allowed is not None:
            kept = [tool for tool in catalogue.tools if allowed(tool.name)]
            del catalogue.tools[:]
            catalogue.tools.extend(kept)
        return catalogue

    async def CallTool(self, request: pb.CallToolRequest, context: RpcContext) -> pb.CallToolResponse:
        principal = current_principal()
        allowed = await self._agent_tools.allowed(principal)
        if allowed is not None and not allowed(request.name):
            raise PermissionDenied(
                f"name: agent {acting_agent_id(principal)} may not use {request.name} "
                "(its allowed_tools do not name it)"
            )
        return await self._calls.call(principal, request)
