"""REST routes for agents: `/v1/agents` and `/v1/agents/{id}` → ConversationService."""

from __future__ import annotations

from macp.conversation.v1 import conversation_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from services.edge.context import edge_context
from services.edge.http import message_response, parse_message
from services.edge.routes import ApiRoute
from services.runtime.auth.settings import service_audience

CONVERSATION_AUDIENCE = service_audience("conversation")


async def create_agent(request: Request) -> Response:
    edge = edge_context(request)
    agent = await parse_message(request, pb.Agent(), edge.settings.max_body_bytes)
    reply: pb.CreateAgentResponse = await edge.conversation.CreateAgent(
        pb.CreateAgentRequest(agent=agent),
        timeout=edge.timeout,
        metadata=await edge.call_metadata(CONVERSATION_AUDIENCE),
    )
    location = f"/v1/agents/{reply.agent.id}"
    return message_response(reply.agent, 201, {"location": location, "etag": f'"{reply.agent.etag}"'})


async def get_agent(request: Request) -> Response:
    edge = edge_context(request)
    reply: pb.GetAgentResponse = await edge.conversation.GetAgent(
        pb.GetAgentRequest(id=request.path_params["id"]),
        timeout=edge.timeout,
        metadata=await edge.call_metadata(CONVERSATION_AUDIENCE),
    )
    return message_response(reply.agent, 200, {"etag": f'"{reply.agent.etag}"'})


ROUTES = [
    ApiRoute(
        method="POST",
        path="/v1/agents",
        operation_id="createAgent",
        summary="Create an agent owned by the caller",
        handler=create_agent,
        body=pb.Agent,
        response=pb.Agent,
        status=201,
        errors=(400, 401, 403, 413, 415, 503),
        tags=("agents",),
    ),
    ApiRoute(
        method="GET",
        path="/v1/agents/{id}",
        operation_id="getAgent",
        summary="Get one agent",
        handler=get_agent,
        response=pb.Agent,
        errors=(400, 401, 403, 404, 503),
        tags=("agents",),
    ),
]
