"""OpenAI-compatible `POST /v1/chat/completions`: one turn of one agent on the caller's messages,
through OrchestratorService.Complete (quota, delegated token, metering as for any turn), so the
official OpenAI SDKs and every tool built on them can talk to a MACP agent (model = agent id).

`stream: true` answers OpenAI's server-sent events (`data: <chat.completion.chunk>` ... `data:
[DONE]`), else one `chat.completion` with `usage`. Errors are OpenAI's shape with the HTTP status
the edge's one table gives their gRPC status (a quota refusal is 429 `insufficient_quota`).

Why the first response is awaited before answering: a refusal (unknown agent, quota, bad input)
comes before any delta, and becomes a real HTTP status; a failure after the first delta can only
be a `data: {"error": ...}` chunk, which the OpenAI SDKs raise as an APIError.

The turn id is the request's `Idempotency-Key` when that is a UUID (a retried request is metered
once), else a new one; it also names the completion (`chatcmpl-<turn id hex>`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import TypeAlias

import grpc
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.edge.context import edge_context
from services.edge.errors import HttpError, http_status
from services.edge.http import read_json_object
from services.edge.openai_shapes import (
    CHAT_REQUEST_SCHEMA,
    CHAT_RESPONSE_SCHEMA,
    OPENAI_ERROR_SCHEMA,
    OpenAIError,
    chunk_document,
    complete_request,
    completion_document,
    finish_reason,
    usage_document,
)
from services.edge.routes import ApiRoute, Content
from services.edge.sse import SSE_HEADERS
from services.edge.ws_streams import ORCHESTRATOR_AUDIENCE
from services.runtime.errors import DomainError

CompleteCall: TypeAlias = "grpc.aio.UnaryStreamCall[pb.CompleteRequest, pb.CompleteResponse]"


def _error_response(error: OpenAIError) -> Response:
    return JSONResponse(error.document(), status_code=error.status.value)


def _from_rpc(error: grpc.aio.AioRpcError) -> OpenAIError:
    status = http_status(error)
    code = "insufficient_quota" if status == HTTPStatus.TOO_MANY_REQUESTS else error.code().name.lower()
    if status == HTTPStatus.NOT_FOUND:
        code = "model_not_found"
    return OpenAIError(status, error.details() or error.code().name.lower(), code=code)


def _data(document: object) -> bytes:
    return f"data: {json.dumps(document, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def _turn_id(request: Request) -> str | None:
    key = request.headers.get("idempotency-key", "")
    try:
        return str(uuid.UUID(key))
    except ValueError:
        return None


async def chat_completions(request: Request) -> Response:
    edge = edge_context(request)
    try:
        document = await read_json_object(request, edge.settings.max_body_bytes)
        complete, stream, include_usage = complete_request(document, _turn_id(request))
        call = edge.orchestrator.Complete(
            complete,
            timeout=edge.settings.completion_timeout_seconds,
            metadata=await edge.call_metadata(ORCHESTRATOR_AUDIENCE),
        )
        first = await call.read()
    except OpenAIError as exc:
        return _error_response(exc)
    except HttpError as exc:
        return _error_response(OpenAIError(exc.status, exc.message, code=exc.code.lower()))
    except grpc.aio.AioRpcError as exc:
        return _error_response(_from_rpc(exc))
    except DomainError as exc:  # the token exchange could not be made
        status = (
            HTTPStatus.UNAUTHORIZED
            if exc.code == grpc.StatusCode.UNAUTHENTICATED
            else HTTPStatus.SERVICE_UNAVAILABLE
        )
        return _error_response(OpenAIError(status, exc.message, code=exc.code.name.lower()))
    created = int(time.time())
    if stream:
        return StreamingResponse(
            _chunks(complete, created, first, call, include_usage),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    try:
        done = await _done(first, call)
    except grpc.aio.AioRpcError as exc:
        return _error_response(_from_rpc(exc))
    except OpenAIError as exc:
        return _error_response(exc)
    return JSONResponse(completion_document(complete, created, done))


async def _done(first: object, call: CompleteCall) -> pb.CompletionDone:
    """The CompletionDone of a Complete stream whose first response is `first` (deltas skipped)."""
    response = first
    while response is not grpc.aio.EOF:
        assert isinstance(response, pb.CompleteResponse)
        if response.WhichOneof("event") == "done":
            return response.done
        response = await call.read()
    raise OpenAIError(
        HTTPStatus.BAD_GATEWAY, "the orchestrator ended the turn without its end", code="incomplete"
    )


async def _chunks(
    complete: pb.CompleteRequest, created: int, first: object, call: CompleteCall, include_usage: bool
) -> AsyncIterator[bytes]:
    try:
        yield _data(chunk_document(complete, created, {"role": "assistant", "content": ""}))
        response = first
        while response is not grpc.aio.EOF:
            assert isinstance(response, pb.CompleteResponse)
            if response.WhichOneof("event") == "delta":
                yield _data(chunk_document(complete, created, {"content": response.delta.text}))
            elif response.WhichOneof("event") == "done":
                done = response.done
                yield _data(chunk_document(complete, created, {}, finish_reason(done)))
                if include_usage:
                    yield _data(chunk_document(complete, created, None, usage=usage_document(done)))
                break
            response = await call.read()
        else:
            error = OpenAIError(HTTPStatus.BAD_GATEWAY, "the orchestrator ended the turn without its end")
            yield _data(error.document())
            return
        yield b"data: [DONE]\n\n"
    except grpc.aio.AioRpcError as exc:
        yield _data(_from_rpc(exc).document())
    finally:
        call.cancel()  # the client left early, or the stream is over: either way nothing more is read


ROUTES = [
    ApiRoute(
        method="POST",
        path="/v1/chat/completions",
        operation_id="createChatCompletion",
        summary=(
            "OpenAI-compatible chat completion: one turn of the agent named by `model` on the given "
            "messages (stream: true answers chat.completion.chunk server-sent events)"
        ),
        handler=chat_completions,
        body=Content(name="ChatCompletionRequest", schema=CHAT_REQUEST_SCHEMA),
        response=Content(name="ChatCompletion", schema=CHAT_RESPONSE_SCHEMA),
        errors=(400, 401, 403, 404, 413, 415, 429, 503),
        error=Content(name="OpenAIError", schema=OPENAI_ERROR_SCHEMA),
        tags=("openai",),
    ),
]
