"""REST routes for messages and archives: `/v1/conversations/{id}/messages`, `/archive`, `/archives`.

POST `/messages` posts a message of the calling user through OrchestratorService.PostMessage, so
it starts a round of the agents (agents' messages are the orchestrator's to append). The body is
`{id?, text, mentionAgentIds?}` (`role`, if given, must be USER). The `id` (a UUID, generated when
left out) is the client's and makes the POST idempotent: the first attempt answers 201, a retry
200, each with `{messageId, sequence, duplicate, eventId}`; `eventId` is the MessageAccepted
event, after which GET `/events` (or the WebSocket) shows the agents' answers. With
`Accept: text/event-stream` the same POST answers 200 with server-sent events instead: the
message's MessageAccepted event as the conversation's log holds it (its `duplicate` this POST's),
then its round's events, ending with the RoundCompleted event of this message (or a fatal error
event); see services/edge/rest/sse.py. A retry whose MessageAccepted the log no longer retains is
400 OUT_OF_RANGE, as resuming from it would be.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from macp.conversation.v1 import conversation_service_pb2 as pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb_orchestrator
from starlette.requests import Request
from starlette.responses import Response

from services.edge.context import edge_context
from services.edge.errors import HttpError
from services.edge.events import preceding_event_id
from services.edge.http import message_response, parse_document, read_json_object
from services.edge.rest.conventions import (
    COMMON_ERRORS,
    PAGE_QUERY,
    SAME_ID,
    WRITE_ERRORS,
    etag_header,
    if_match,
    invalid,
    or_empty,
    page,
    query,
    same_id,
)
from services.edge.rest.sse import event_stream_response, stream_events, wants_event_stream
from services.edge.routes import ApiRoute, Content, Link

URL_TTL_QUERY = (
    "url_ttl",
    or_empty({"type": "string", "pattern": "^[0-9]+s$"}),
    "how long the URL works (60s to 604800s)",
)


USER_ROLES = ("", "MESSAGE_ROLE_UNSPECIFIED", "MESSAGE_ROLE_USER")
# The body's members and where each goes in the UserMessage (JSON names, and the proto names too).
_BODY_FIELDS = {
    "id": "messageId",
    "text": "text",
    "mentionAgentIds": "mentionAgentIds",
    "mention_agent_ids": "mentionAgentIds",
}
POST_MESSAGE_BODY = Content(
    name="PostMessageBody",
    schema={
        "type": "object",
        "required": ["text"],
        "additionalProperties": False,
        "properties": {
            "id": {
                "type": "string",
                "format": "uuid",
                "description": "the message id; retries with the same id are accepted once",
            },
            "text": {"type": "string", "minLength": 1, "maxLength": 32000},
            "mentionAgentIds": {
                "type": "array",
                "maxItems": 16,
                "uniqueItems": True,
                "items": {"type": "string", "format": "uuid"},
                "description": "agents the user addressed (@mentions), preferred for the next turns",
            },
            "role": {"type": "string", "enum": ["MESSAGE_ROLE_USER"], "description": "only USER"},
            "conversationId": {"type": "string", "format": "uuid", "description": "the path's, or absent"},
        },
    },
)


def user_message(document: dict[str, Any], conversation_id: str) -> pb_orchestrator.UserMessage:
    """The UserMessage of a POST body, refusing unknown members and other roles by name."""
    same_id(document, conversation_id, "conversationId")
    role = document.get("role", "")
    if role not in USER_ROLES:
        raise HttpError(
            HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", "role: only USER messages are posted here"
        )
    fields: dict[str, Any] = {}
    for name, value in document.items():
        if name in ("role", "conversationId"):
            continue
        target = _BODY_FIELDS.get(name)
        if target is None:
            raise invalid(f"{name}: unknown field (expected: id, text, mentionAgentIds)")
        fields[target] = value
    message = parse_document(fields, pb_orchestrator.UserMessage())
    message.message_id = message.message_id or str(uuid.uuid4())
    return message


def _as_answer_of(
    reply: pb_orchestrator.PostMessageResponse,
) -> Callable[[pb_orchestrator.ConversationEvent], pb_orchestrator.ConversationEvent]:
    """The POST's own MessageAccepted says whether this POST was a retry (`duplicate`), which
    the logged one, written by the first POST, cannot; every other event goes as it is."""

    def revise(event: pb_orchestrator.ConversationEvent) -> pb_orchestrator.ConversationEvent:
        if event.event_id != reply.event_id or not event.HasField("message_accepted"):
            return event
        answer = pb_orchestrator.ConversationEvent()
        answer.CopyFrom(event)
        answer.message_accepted.duplicate = reply.duplicate
        return answer

    return revise


def _round_of(message_id: str) -> Callable[[pb_orchestrator.ConversationEvent], bool]:
    """Where the SSE answer of a POST ends: its own round's end, or a fatal error."""

    def last(event: pb_orchestrator.ConversationEvent) -> bool:
        kind = event.WhichOneof("payload")
        if kind == "round_completed":
            return event.round_completed.trigger_message_id == message_id
        return kind == "error" and event.error.fatal

    return last


async def append_message(request: Request) -> Response:
    edge = edge_context(request)
    query(request, ())
    conversation_id = request.path_params["id"]
    document = await read_json_object(request, edge.settings.max_body_bytes)
    message = user_message(document, conversation_id)
    reply: pb_orchestrator.PostMessageResponse = await edge.orchestrator.PostMessage(
        pb_orchestrator.PostMessageRequest(conversation_id=conversation_id, message=message),
        timeout=edge.timeout,
    )
    status = 200 if reply.duplicate else 201
    if not wants_event_stream(request):
        return message_response(reply, status)
    # The stream starts just before the message's MessageAccepted event, so it opens with that
    # event as the log holds it (time and all, as every other client sees it; a retry shows it
    # too), then the round's events.
    events = await stream_events(
        edge,
        conversation_id,
        preceding_event_id(reply.event_id),
        _round_of(reply.message_id),
        _as_answer_of(reply),
    )
    return event_stream_response(events)


async def list_messages(request: Request) -> Response:
    edge = edge_context(request)
    params = query(request, ("page_size", "page_token", "order_by"))
    reply: pb.ListMessagesResponse = await edge.conversation.ListMessages(
        pb.ListMessagesRequest(
            conversation_id=request.path_params["id"], order_by=params.get("order_by", ""), **page(params)
        ),
        timeout=edge.timeout,
    )
    return message_response(reply)


async def archive_conversation(request: Request) -> Response:
    edge = edge_context(request)
    query(request, ())
    conversation_id = request.path_params["id"]
    archive = pb.ArchiveConversationRequest()
    # The body is optional: none at all means the defaults (read through the size limit otherwise).
    if request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers:
        document = await read_json_object(request, edge.settings.max_body_bytes)
        same_id(document, conversation_id, "conversationId")
        parse_document(document, archive)
    archive.conversation_id = conversation_id
    archive.etag = if_match(request) or archive.etag
    reply: pb.ArchiveConversationResponse = await edge.conversation.ArchiveConversation(
        archive, timeout=edge.timeout
    )
    location = f"/v1/conversations/{conversation_id}/archives/{reply.archive.id}"
    return message_response(reply, 201, {"location": location, **etag_header(reply.conversation.etag)})


def _url_ttl(request: pb.GetArchiveRequest, text: str) -> None:
    if text:
        if not text.endswith("s") or not text[:-1].isdigit() or len(text) > 10:
            raise invalid("url_ttl: seconds, as in 900s")
        request.url_ttl.seconds = int(text[:-1])


async def list_archives(request: Request) -> Response:
    edge = edge_context(request)
    params = query(request, ("page_size", "page_token"))
    reply: pb.ListArchivesResponse = await edge.conversation.ListArchives(
        pb.ListArchivesRequest(conversation_id=request.path_params["id"], **page(params)),
        timeout=edge.timeout,
    )
    return message_response(reply)


async def get_archive(request: Request) -> Response:
    edge = edge_context(request)
    params = query(request, ("url_ttl",))
    archive_request = pb.GetArchiveRequest(id=request.path_params["archive_id"])
    _url_ttl(archive_request, params.get("url_ttl", ""))
    reply: pb.GetArchiveResponse = await edge.conversation.GetArchive(archive_request, timeout=edge.timeout)
    if reply.archive.conversation_id != request.path_params["id"]:
        # Another conversation's archive (of the same tenant): not under this path.
        raise HttpError(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"archive {archive_request.id} not found")
    return message_response(reply)


ROUTES = [
    ApiRoute(
        method="POST",
        path="/v1/conversations/{id}/messages",
        operation_id="appendMessage",
        summary=(
            "Post a message of the calling user, starting a round of the agents (idempotent by its "
            "id: 201 accepted, 200 a retry); with Accept: text/event-stream, 200 with the round's "
            "events as server-sent events"
        ),
        handler=append_message,
        body=POST_MESSAGE_BODY,
        response=pb_orchestrator.PostMessageResponse,
        status=201,
        extra_statuses=(200,),
        errors=(*WRITE_ERRORS, 404, 409, 429),
        tags=("messages",),
        links=(Link("ListMessages", "listMessages", (SAME_ID,)),),
    ),
    ApiRoute(
        method="GET",
        path="/v1/conversations/{id}/messages",
        operation_id="listMessages",
        summary="List a conversation's messages in order (ascending sequence)",
        handler=list_messages,
        response=pb.ListMessagesResponse,
        query=(
            *PAGE_QUERY,
            (
                "order_by",
                or_empty({"type": "string", "enum": ["sequence", "sequence desc"]}),
                "sequence (oldest first, the default) or sequence desc (newest first)",
            ),
        ),
        errors=(*COMMON_ERRORS, 404),
        tags=("messages",),
    ),
    ApiRoute(
        method="POST",
        path="/v1/conversations/{id}/archive",
        operation_id="archiveConversation",
        summary="Write the transcript to S3 (JSON Lines); close: true also makes it read-only",
        handler=archive_conversation,
        body=pb.ArchiveConversationRequest,
        body_required=False,
        response=pb.ArchiveConversationResponse,
        status=201,
        errors=(*WRITE_ERRORS, 404, 412),
        tags=("archives",),
        links=(
            Link("GetArchive", "getArchive", (SAME_ID, ("path.archive_id", "$response.body#/archive/id"))),
            Link("ListArchives", "listArchives", (SAME_ID,)),
            Link("GetConversation", "getConversation", (SAME_ID,)),
        ),
    ),
    ApiRoute(
        method="GET",
        path="/v1/conversations/{id}/archives",
        operation_id="listArchives",
        summary="List a conversation's archives, oldest first",
        handler=list_archives,
        response=pb.ListArchivesResponse,
        query=PAGE_QUERY,
        errors=(*COMMON_ERRORS, 404),
        tags=("archives",),
    ),
    ApiRoute(
        method="GET",
        path="/v1/conversations/{id}/archives/{archive_id}",
        operation_id="getArchive",
        summary="Get one archive with a fresh presigned download URL",
        handler=get_archive,
        response=pb.GetArchiveResponse,
        query=(URL_TTL_QUERY,),
        errors=(*COMMON_ERRORS, 404),
        tags=("archives",),
    ),
]
