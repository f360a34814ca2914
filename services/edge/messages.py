"""REST routes for messages and archives: `/v1/conversations/{id}/messages`, `/archive`, `/archives`.

POST `/messages` appends a message of the calling user (role USER, author the caller): agents'
messages are the orchestrator's to append. The message `id` is the client's and makes the POST
idempotent: a retry answers 200 with the stored message, the first attempt 201.
"""

from __future__ import annotations

from http import HTTPStatus

from macp.conversation.v1 import conversation_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from services.edge.auth import caller_var
from services.edge.context import edge_context
from services.edge.errors import HttpError
from services.edge.http import message_response, parse_document, read_json_object
from services.edge.rest import (
    COMMON_ERRORS,
    PAGE_QUERY,
    WRITE_ERRORS,
    call_options,
    etag_header,
    if_match,
    invalid,
    page,
    query,
    same_id,
)
from services.edge.routes import ApiRoute

URL_TTL_QUERY = (
    "url_ttl",
    {"type": "string", "pattern": "^[0-9]+s$"},
    "how long the URL works (60s to 604800s)",
)


def _caller_user_id() -> str:
    caller = caller_var.get()
    return (caller.claims.user_id or "") if caller is not None else ""


async def append_message(request: Request) -> Response:
    edge = edge_context(request)
    query(request, ())
    conversation_id = request.path_params["id"]
    document = await read_json_object(request, edge.settings.max_body_bytes)
    same_id(document, conversation_id, "conversationId")
    message = parse_document(document, pb.Message())
    if message.role not in (pb.MESSAGE_ROLE_UNSPECIFIED, pb.MESSAGE_ROLE_USER):
        raise HttpError(
            HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", "role: only USER messages are posted here"
        )
    message.conversation_id, message.role = conversation_id, pb.MESSAGE_ROLE_USER
    message.author_id = message.author_id or _caller_user_id()
    reply: pb.AppendMessageResponse = await edge.conversation.AppendMessage(
        pb.AppendMessageRequest(message=message), **await call_options(edge)
    )
    return message_response(reply.message, 201 if reply.created else 200)


async def list_messages(request: Request) -> Response:
    edge = edge_context(request)
    params = query(request, ("page_size", "page_token"))
    reply: pb.ListMessagesResponse = await edge.conversation.ListMessages(
        pb.ListMessagesRequest(conversation_id=request.path_params["id"], **page(params)),
        **await call_options(edge),
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
        archive, **await call_options(edge)
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
        **await call_options(edge),
    )
    return message_response(reply)


async def get_archive(request: Request) -> Response:
    edge = edge_context(request)
    params = query(request, ("url_ttl",))
    archive_request = pb.GetArchiveRequest(id=request.path_params["archive_id"])
    _url_ttl(archive_request, params.get("url_ttl", ""))
    reply: pb.GetArchiveResponse = await edge.conversation.GetArchive(
        archive_request, **await call_options(edge)
    )
    if reply.archive.conversation_id != request.path_params["id"]:
        # Another conversation's archive (of the same tenant): not under this path.
        raise HttpError(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"archive {archive_request.id} not found")
    return message_response(reply)


ROUTES = [
    ApiRoute(
        method="POST",
        path="/v1/conversations/{id}/messages",
        operation_id="appendMessage",
        summary="Append a message of the calling user (idempotent by its id: 201 stored, 200 a retry)",
        handler=append_message,
        body=pb.Message,
        response=pb.Message,
        status=201,
        extra_statuses=(200,),
        errors=(*WRITE_ERRORS, 404, 409),
        tags=("messages",),
    ),
    ApiRoute(
        method="GET",
        path="/v1/conversations/{id}/messages",
        operation_id="listMessages",
        summary="List a conversation's messages in order (ascending sequence)",
        handler=list_messages,
        response=pb.ListMessagesResponse,
        query=PAGE_QUERY,
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
