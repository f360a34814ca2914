"""REST routes for conversations: `/v1/conversations` and `/v1/conversations/{id}` → ConversationService."""

from __future__ import annotations

from macp.conversation.v1 import conversation_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from services.edge.context import edge_context
from services.edge.http import message_response
from services.edge.rest.conventions import (
    COMMON_ERRORS,
    ITS_ID,
    PAGE_QUERY,
    WRITE_ERRORS,
    invalid,
    or_empty,
    page,
    query,
    resource_links,
)
from services.edge.rest.resources import StoredResource
from services.edge.routes import ApiRoute, Link
from services.runtime import resource_cache

# The filter's values: every state but UNSPECIFIED (leaving `status` out means all).
STATUSES = [value.name for value in pb.ConversationStatus.DESCRIPTOR.values if value.number != 0]


def _status(text: str) -> int:
    if not text:
        return 0
    if text not in STATUSES:
        raise invalid(f"status: one of {', '.join(STATUSES)}")
    return pb.ConversationStatus.Value(text)


CONVERSATIONS = StoredResource(
    "conversations",
    pb.Conversation,
    pb,
    "ConversationService",
    lambda edge: edge.conversation,
    resource_cache.CONVERSATION,
    required=("participant_agent_ids", "turn_policy"),  # CreateConversationRequest's rules
)


async def list_conversations(request: Request) -> Response:
    edge = edge_context(request)
    params = query(request, ("page_size", "page_token", "status", "agent_id"))
    reply: pb.ListConversationsResponse = await edge.conversation.ListConversations(
        pb.ListConversationsRequest(
            **page(params),
            status=_status(params.get("status", "")),  # type: ignore[arg-type]
            agent_id=params.get("agent_id", ""),
        ),
        timeout=edge.timeout,
    )
    return message_response(reply)


STATUS_QUERY = ("status", or_empty({"type": "string", "enum": STATUSES}), "only conversations in this state")
AGENT_QUERY = (
    "agent_id",
    or_empty({"type": "string", "format": "uuid"}),
    "only conversations this agent takes part in",
)

# A conversation leads to its own operations and to its messages and archives.
CONVERSATION_LINKS = (
    *resource_links("Conversation"),
    Link("AppendMessage", "appendMessage", (ITS_ID,)),
    Link("ListMessages", "listMessages", (ITS_ID,)),
    Link("ArchiveConversation", "archiveConversation", (ITS_ID,)),
    Link("ListArchives", "listArchives", (ITS_ID,)),
)

ROUTES = [
    ApiRoute(
        method="POST",
        path="/v1/conversations",
        operation_id="createConversation",
        summary="Create a conversation of the caller with some of the tenant's agents",
        handler=CONVERSATIONS.create,
        body=pb.Conversation,
        required=CONVERSATIONS.required,
        response=pb.Conversation,
        status=201,
        errors=(*WRITE_ERRORS, 409),
        tags=("conversations",),
        links=CONVERSATION_LINKS,
    ),
    ApiRoute(
        method="GET",
        path="/v1/conversations",
        operation_id="listConversations",
        summary="List the tenant's conversations, oldest first",
        handler=list_conversations,
        response=pb.ListConversationsResponse,
        query=(*PAGE_QUERY, STATUS_QUERY, AGENT_QUERY),
        errors=COMMON_ERRORS,
        tags=("conversations",),
    ),
    ApiRoute(
        method="GET",
        path="/v1/conversations/{id}",
        operation_id="getConversation",
        summary="Get one conversation",
        handler=CONVERSATIONS.get,
        response=pb.Conversation,
        errors=(*COMMON_ERRORS, 404),
        tags=("conversations",),
        links=CONVERSATION_LINKS,
    ),
    ApiRoute(
        method="PATCH",
        path="/v1/conversations/{id}",
        operation_id="updateConversation",
        summary="Change the fields in the body (If-Match: the etag last read; 409 once archived)",
        handler=CONVERSATIONS.update,
        body=pb.Conversation,
        not_cleared=CONVERSATIONS.required,  # its Update refuses to clear them
        response=pb.Conversation,
        errors=(*WRITE_ERRORS, 404, 409, 412, 428),
        tags=("conversations",),
        links=CONVERSATION_LINKS,
    ),
    ApiRoute(
        method="DELETE",
        path="/v1/conversations/{id}",
        operation_id="deleteConversation",
        summary="Delete a conversation and its messages (archives stay in S3)",
        handler=CONVERSATIONS.delete,
        response=None,
        status=204,
        errors=(*COMMON_ERRORS, 404, 412),
        tags=("conversations",),
    ),
]
