"""REST routes for agents: `/v1/agents` and `/v1/agents/{id}` → ConversationService."""

from __future__ import annotations

from macp.conversation.v1 import conversation_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from services.edge.context import edge_context
from services.edge.http import message_response, parse_message
from services.edge.rest.cached_reads import cached
from services.edge.rest.conventions import (
    COMMON_ERRORS,
    PAGE_QUERY,
    WRITE_ERRORS,
    etag_header,
    if_match,
    page,
    patch_request,
    query,
    resource_links,
)
from services.edge.routes import ApiRoute, Link
from services.runtime import resource_cache


async def create_agent(request: Request) -> Response:
    edge = edge_context(request)
    query(request, ())
    agent = await parse_message(request, pb.Agent(), edge.settings.max_body_bytes)
    reply: pb.CreateAgentResponse = await edge.conversation.CreateAgent(
        pb.CreateAgentRequest(agent=agent), timeout=edge.timeout
    )
    location = f"/v1/agents/{reply.agent.id}"
    return message_response(reply.agent, 201, {"location": location, **etag_header(reply.agent.etag)})


async def get_agent(request: Request) -> Response:
    edge = edge_context(request)
    query(request, ())
    agent_id = request.path_params["id"]
    agent = await cached(edge, resource_cache.AGENT, agent_id, pb.Agent.FromString)
    if agent is None:
        reply: pb.GetAgentResponse = await edge.conversation.GetAgent(
            pb.GetAgentRequest(id=agent_id), timeout=edge.timeout
        )
        agent = reply.agent
    return message_response(agent, 200, etag_header(agent.etag))


async def list_agents(request: Request) -> Response:
    edge = edge_context(request)
    params = query(request, ("page_size", "page_token", "capability"))
    reply: pb.ListAgentsResponse = await edge.conversation.ListAgents(
        pb.ListAgentsRequest(**page(params), capability=params.get("capability", "")),
        timeout=edge.timeout,
    )
    return message_response(reply)


async def update_agent(request: Request) -> Response:
    edge = edge_context(request)
    changes, mask = await patch_request(request, edge, pb.Agent())
    reply: pb.UpdateAgentResponse = await edge.conversation.UpdateAgent(
        pb.UpdateAgentRequest(agent=changes, update_mask=mask), timeout=edge.timeout
    )
    return message_response(reply.agent, 200, etag_header(reply.agent.etag))


async def delete_agent(request: Request) -> Response:
    edge = edge_context(request)
    query(request, ())
    await edge.conversation.DeleteAgent(
        pb.DeleteAgentRequest(id=request.path_params["id"], etag=if_match(request)),
        timeout=edge.timeout,
    )
    return Response(status_code=204)


AGENT_LINKS = resource_links("Agent")
# A new agent can take part in a new conversation.
JOIN_CONVERSATION = Link(
    "CreateConversation", "createConversation", request_body={"participantAgentIds": ["$response.body#/id"]}
)

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
        errors=WRITE_ERRORS,
        tags=("agents",),
        links=(*AGENT_LINKS, JOIN_CONVERSATION),
    ),
    ApiRoute(
        method="GET",
        path="/v1/agents",
        operation_id="listAgents",
        summary="List the tenant's agents, oldest first",
        handler=list_agents,
        response=pb.ListAgentsResponse,
        query=(*PAGE_QUERY, ("capability", {"type": "string", "maxLength": 64}, "only agents with this tag")),
        errors=COMMON_ERRORS,
        tags=("agents",),
    ),
    ApiRoute(
        method="GET",
        path="/v1/agents/{id}",
        operation_id="getAgent",
        summary="Get one agent",
        handler=get_agent,
        response=pb.Agent,
        errors=(*COMMON_ERRORS, 404),
        tags=("agents",),
        links=AGENT_LINKS,
    ),
    ApiRoute(
        method="PATCH",
        path="/v1/agents/{id}",
        operation_id="updateAgent",
        summary="Change the fields in the body (If-Match: the etag last read)",
        handler=update_agent,
        body=pb.Agent,
        response=pb.Agent,
        errors=(*WRITE_ERRORS, 404, 412, 428),
        tags=("agents",),
        links=AGENT_LINKS,
    ),
    ApiRoute(
        method="DELETE",
        path="/v1/agents/{id}",
        operation_id="deleteAgent",
        summary="Delete an agent (409 while an active conversation lists it)",
        handler=delete_agent,
        response=None,
        status=204,
        errors=(*COMMON_ERRORS, 404, 409, 412),
        tags=("agents",),
    ),
]
