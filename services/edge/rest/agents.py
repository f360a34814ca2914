"""REST routes for agents: `/v1/agents` and `/v1/agents/{id}` → ConversationService."""

from __future__ import annotations

from macp.conversation.v1 import conversation_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from services.edge.context import edge_context
from services.edge.http import message_response
from services.edge.rest.conventions import (
    COMMON_ERRORS,
    PAGE_QUERY,
    WRITE_ERRORS,
    page,
    query,
    resource_links,
)
from services.edge.rest.resources import StoredResource
from services.edge.routes import ApiRoute, Link
from services.runtime import resource_cache

AGENTS = StoredResource(
    "agents",
    pb.Agent,
    pb,
    "ConversationService",
    lambda edge: edge.conversation,
    resource_cache.AGENT,
    required=("name", "provider", "model"),  # CreateAgentRequest's rules
)


async def list_agents(request: Request) -> Response:
    edge = edge_context(request)
    params = query(request, ("page_size", "page_token", "capability"))
    reply: pb.ListAgentsResponse = await edge.conversation.ListAgents(
        pb.ListAgentsRequest(**page(params), capability=params.get("capability", "")),
        timeout=edge.timeout,
    )
    return message_response(reply)


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
        handler=AGENTS.create,
        body=pb.Agent,
        required=AGENTS.required,
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
        handler=AGENTS.get,
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
        handler=AGENTS.update,
        body=pb.Agent,
        not_cleared=AGENTS.required,  # its Update refuses to clear them
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
        handler=AGENTS.delete,
        response=None,
        status=204,
        errors=(*COMMON_ERRORS, 404, 409, 412),
        tags=("agents",),
    ),
]
