"""Server-sent events: a conversation's events for clients that cannot hold a WebSocket.

`GET /v1/conversations/{id}/events` follows the conversation (OrchestratorService.StreamEvents)
until the client leaves; it resumes after `Last-Event-ID` (what EventSource sends when it
reconnects) or `?after=`. `POST /v1/conversations/{id}/messages` with `Accept: text/event-stream`
posts the message and follows only its round (services/edge/rest/messages.py).

Each SSE event: `id:` the event id (so EventSource resumes by itself), `event:` the payload's kind
(`token_delta`, `round_completed`, ...), `data:` the ConversationEvent as JSON, with the same
proto field names as the WebSocket's event frames. Every event is one of the conversation's log
(a refused action's error too), so each names its conversation, has a resumable id and carries
its time. A comment line goes out every
MACP_EDGE_SSE_HEARTBEAT_SECONDS so proxies do not take a quiet stream for a dead one.

Why wait for the first event a moment before answering: the orchestrator refuses a stream it
cannot serve (an unknown conversation, an event no longer retained) at once, and such a refusal
is better told with the HTTP status the edge gives every error than as a 200 whose first event is
an error. A stream that is merely quiet starts after SSE_FIRST_EVENT_WAIT_SECONDS. A failure
after that is an `event: error` (data: {code, message}) and the end of the stream; so is the
revocation of the token the stream was opened with (code UNAUTHENTICATED, within the revocation
cache window: services/edge/open_streams.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any

import grpc
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from services.edge.context import EdgeContext, edge_context
from services.edge.errors import HttpError
from services.edge.events import dumps, violations
from services.edge.rest.conventions import COMMON_ERRORS, query
from services.edge.routes import ApiRoute, Content
from services.runtime.errors import Unauthenticated
from services.runtime.event_documents import event_document, payload_kind
from services.runtime.principal import caller_var

EVENT_STREAM = "text/event-stream"
SSE_FIRST_EVENT_WAIT_SECONDS = 0.5
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}

EVENT_STREAM_CONTENT = Content(
    name="ConversationEventStream",
    media_type=EVENT_STREAM,
    schema={
        "type": "string",
        "description": (
            "Server-sent events: `id:` the event id, `event:` the payload kind (message_accepted, "
            "bidding_opened, bid_results, turn_started, token_delta, tool_call_started, "
            "tool_call_completed, turn_completed, usage, error, round_completed, and with voice "
            "utterance_transcribed, speech_audio, speech_completed), `data:` the "
            "macp.orchestrator.v1.ConversationEvent as JSON with proto field names (docs/websocket.md "
            "describes each); `event: error` with data {code, message} when the stream fails."
        ),
    },
)
AFTER_QUERY = (
    "after",
    {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9._:-]*$"},
    "resume after this event id (the Last-Event-ID header does the same and wins)",
)


def wants_event_stream(request: Request) -> bool:
    return EVENT_STREAM in request.headers.get("accept", "").lower()


def sse_event(event: pb.ConversationEvent) -> bytes:
    data = dumps(event_document(event))
    return f"id: {event.event_id}\nevent: {payload_kind(event)}\ndata: {data}\n\n".encode()


def sse_error(code: str, message: str) -> bytes:
    return f"event: error\ndata: {dumps({'code': code, 'message': message})}\n\n".encode()


# Tells where a followed stream ends: after the event it accepts (None: when the client leaves).
Stop = Callable[[pb.ConversationEvent], bool]
# What a stream makes of each event before it is sent (None: the event as the log holds it).
Revise = Callable[[pb.ConversationEvent], pb.ConversationEvent]
# What the reader and the revocation sweep hand the stream: an event, a failure, or the end (None).
Item = pb.ConversationEvent | BaseException | None


class TokenRevoked(Exception):
    """The token the stream was opened with was revoked."""


class _RevocationWatch:
    """Tells a stream that its token was revoked (services/edge/open_streams.py's `Revocable`)."""

    __slots__ = ("_queue",)

    def __init__(self, queue: asyncio.Queue[Item]) -> None:
        self._queue = queue

    def token_revoked(self) -> None:
        self._queue.put_nowait(TokenRevoked())


async def stream_events(
    edge: EdgeContext,
    conversation_id: str,
    after_event_id: str,
    stop: Stop | None = None,
    revise: Revise | None = None,
) -> AsyncIterator[bytes]:
    """The conversation's events after `after_event_id` as SSE (each through `revise`, if given),
    until `stop` accepts one or the caller stops iterating.

    The first event (or an error) is awaited before the first chunk is yielded: see the module
    docstring. The stream is cancelled when the iterator is closed (the client left)."""
    request = pb.StreamEventsRequest(conversation_id=conversation_id, after_event_id=after_event_id)
    problem = violations(request, {"after_event_id": "after (or Last-Event-ID)"})
    if problem is not None:
        raise HttpError(HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", problem)
    caller = caller_var.get()
    if caller is None:
        raise Unauthenticated("this request carries no verified token")
    call = edge.orchestrator.StreamEvents(request)
    queue: asyncio.Queue[Item] = asyncio.Queue()

    async def read() -> None:
        try:
            async for response in call:
                queue.put_nowait(response.event)
            queue.put_nowait(None)
        except grpc.aio.AioRpcError as exc:
            queue.put_nowait(exc)

    # The reader is its own task so heartbeats can go out while it waits; it never blocks (the
    # queue is unbounded, but each item waits only for this stream's own client to read it).
    reader = asyncio.get_running_loop().create_task(read())
    watch = _RevocationWatch(queue)
    edge.open_streams.watch(caller.principal.token_id, watch)

    def stop_reading() -> None:
        edge.open_streams.unwatch(caller.principal.token_id, watch)
        call.cancel()
        reader.cancel()

    try:
        first: Item = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SSE_FIRST_EVENT_WAIT_SECONDS):
                first = await queue.get()
        if isinstance(first, grpc.aio.AioRpcError):
            raise first
        return _follow(edge, first, queue, stop_reading, stop, revise)
    except BaseException:
        stop_reading()
        raise


def _ending(item: Item) -> bytes | None:
    """The last chunk of a stream when `item` ends it (the stream over, failed or its token
    revoked), else None."""
    if item is None:
        return sse_error("UNAVAILABLE", "the orchestrator ended the stream; reconnect to resume")
    if isinstance(item, TokenRevoked):
        return sse_error("UNAUTHENTICATED", "the token was revoked; reconnect with a valid one")
    if isinstance(item, grpc.aio.AioRpcError):
        return sse_error(item.code().name, item.details() or item.code().name.lower())
    if isinstance(item, BaseException):
        raise item
    return None


async def _follow(
    edge: EdgeContext,
    first: Item,
    queue: asyncio.Queue[Item],
    stop_reading: Callable[[], None],
    stop: Stop | None,
    revise: Revise | None,
) -> AsyncIterator[bytes]:
    heartbeat = edge.settings.sse_heartbeat_seconds or None
    try:
        if first is not None:  # None here: no event within the first wait
            chunk, done = _chunk(first, stop, revise)
            yield chunk
            if done:
                return
        while True:
            try:
                async with asyncio.timeout(heartbeat):
                    item = await queue.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            chunk, done = _chunk(item, stop, revise)
            yield chunk
            if done:
                return
    finally:
        stop_reading()


def _chunk(item: Item, stop: Stop | None, revise: Revise | None) -> tuple[bytes, bool]:
    """What the stream sends for `item`, and whether the stream ends with it."""
    last = _ending(item)
    if last is not None:
        return last, True
    assert isinstance(item, pb.ConversationEvent)
    event = item if revise is None else revise(item)
    return sse_event(event), stop is not None and stop(event)


def event_stream_response(chunks: AsyncIterator[bytes], **headers: Any) -> Response:
    return StreamingResponse(chunks, media_type=EVENT_STREAM, headers={**SSE_HEADERS, **headers})


async def conversation_events(request: Request) -> Response:
    edge = edge_context(request)
    params = query(request, ("after",))
    after = request.headers.get("last-event-id") or params.get("after", "")
    events = await stream_events(edge, request.path_params["id"], after)
    return event_stream_response(events)


ROUTES = [
    ApiRoute(
        method="GET",
        path="/v1/conversations/{id}/events",
        operation_id="streamConversationEvents",
        summary=(
            "Follow a conversation's events as server-sent events, resuming after Last-Event-ID "
            "(or ?after=); 400 for an event no longer retained"
        ),
        handler=conversation_events,
        response=EVENT_STREAM_CONTENT,
        query=(AFTER_QUERY,),
        errors=(*COMMON_ERRORS, 404, 429),
        tags=("events",),
    ),
]
