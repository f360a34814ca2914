"""OpenAI-compatible `POST /v1/chat/completions`: one turn of one agent on the caller's messages,
through OrchestratorService.Complete (quota, delegated token, metering as for any turn), so the
official OpenAI SDKs and every tool built on them can talk to a MACP agent (model = agent id).

`stream: true` answers OpenAI's server-sent events (`data: <chat.completion.chunk>` ... `data:
[DONE]`), else one `chat.completion` with `usage`. With the client's own `tools` (openai_tools.py),
a turn may end in the agent's calls of them: `message.tool_calls` and finish reason `tool_calls`,
streamed as `delta.tool_calls` chunks once the turn has ended (the orchestrator returns whole
calls). Errors are OpenAI's shape with the HTTP status the edge's one table gives their gRPC status
(openai_errors.py: a quota refusal is 429 `insufficient_quota`, an unknown agent 404
`model_not_found`).

Why the first response is awaited before answering: a refusal (unknown agent, quota, bad input)
comes before any delta, and becomes a real HTTP status; a failure after the first delta can only
be a `data: {"error": ...}` chunk, which the OpenAI SDKs raise as an APIError.

With an `Idempotency-Key` (services/edge/rest/idempotency.py) the request is answered once per key: a
retry with the same body gets the stored completion (streamed again if it asked for a stream) and
runs no second turn, the same key while the first is still running gets 409, and the same key with
another body 422, never the other body's answer nor a second generation under one metered turn.
The turn id is derived from the caller's tenant, client and key, so it is the same for every retry
and no other caller's; without a key it is new. It also names the completion
(`chatcmpl-<turn id hex>`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import TypeAlias

import grpc
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.edge.context import edge_context
from services.edge.http import read_json_object
from services.edge.rate_limits import caller_identity
from services.edge.rest.idempotency import Claim, IdempotencyKeys, KeyScope, Replay, fingerprint, request_key
from services.edge.rest.openai_errors import OPENAI_ERROR_SCHEMA, OpenAIError, from_rpc, openai_error
from services.edge.rest.openai_shapes import (
    CHAT_REQUEST_SCHEMA,
    CHAT_RESPONSE_SCHEMA,
    chunk_document,
    complete_request,
    completion_document,
    finish_reason,
    usage_document,
)
from services.edge.rest.openai_tools import tool_call_deltas
from services.edge.rest.sse import SSE_HEADERS
from services.edge.routes import ApiRoute, Content
from services.runtime.principal import caller_var

log = logging.getLogger("macp.edge.chat_completions")

CompleteCall: TypeAlias = "grpc.aio.UnaryStreamCall[pb.CompleteRequest, pb.CompleteResponse]"


def _data(document: object) -> bytes:
    return f"data: {json.dumps(document, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def _key_scope(request: Request) -> KeyScope | None:
    """The request's Idempotency-Key in its caller's tenant and client (None without one)."""
    key = request_key(request.headers)
    caller = caller_var.get()
    if key is None or caller is None:
        return None
    _, client_id, tenant_id = caller_identity(caller)
    return KeyScope(tenant_id, client_id, key)


def _answer(created: int, done: pb.CompletionDone) -> bytes:
    """What a keyed request stores for its retries: when it was created, and its end."""
    return created.to_bytes(8, "big") + done.SerializeToString()


def _replayed(complete: pb.CompleteRequest, stream: bool, include_usage: bool, answer: bytes) -> Response:
    """The stored answer of a keyed request, in the shape this retry asked for."""
    created, done = int.from_bytes(answer[:8], "big"), pb.CompletionDone.FromString(answer[8:])
    if not stream:
        return JSONResponse(completion_document(complete, created, done))

    async def chunks() -> AsyncIterator[bytes]:
        yield _data(chunk_document(complete, created, {"role": "assistant", "content": ""}))
        if done.text:
            yield _data(chunk_document(complete, created, {"content": done.text}))
        for chunk in _ending(complete, created, done, include_usage):
            yield chunk
        yield b"data: [DONE]\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream", headers=SSE_HEADERS)


def _ending(
    complete: pb.CompleteRequest, created: int, done: pb.CompletionDone, include_usage: bool
) -> list[bytes]:
    """A stream's chunks after the text: the tool calls, the finish reason, the usage if asked."""
    chunks = [
        _data(chunk_document(complete, created, dict(delta))) for delta in tool_call_deltas(done.tool_calls)
    ]
    chunks.append(_data(chunk_document(complete, created, {}, finish_reason(done))))
    if include_usage:
        chunks.append(_data(chunk_document(complete, created, None, usage=usage_document(done))))
    return chunks


class _Keyed:
    """A keyed request's claim, settled once: its answer stored, or the claim dropped so that a
    retry runs afresh (a turn that did not end released its quota hold: nothing was billed)."""

    def __init__(self, keys: IdempotencyKeys, claim: Claim | None = None) -> None:
        self._keys = keys
        self._claim = claim

    async def answered(self, created: int, done: pb.CompletionDone) -> None:
        claim, self._claim = self._claim, None
        if claim is None:
            return
        try:
            await self._keys.complete(claim, _answer(created, done))
        except (RedisError, OSError, TimeoutError) as exc:
            # The caller has its answer; the claim stays until it lapses, so a retry meanwhile is
            # told 409, not run a second time.
            log.warning("the answer of an idempotent request was not stored: %s", exc)

    async def abandoned(self) -> None:
        claim, self._claim = self._claim, None
        if claim is None:
            return
        try:
            await asyncio.shield(self._keys.release(claim))
        except (RedisError, OSError, TimeoutError) as exc:
            # The claim lapses by itself after the request's deadline; until then a retry gets 409.
            log.warning("the claim of an unfinished idempotent request was not dropped: %s", exc)


async def chat_completions(request: Request) -> Response:
    edge = edge_context(request)
    keyed = _Keyed(edge.idempotency)
    try:
        document = await read_json_object(request, edge.settings.max_body_bytes)
        scope = _key_scope(request)
        complete, stream, include_usage = complete_request(document, scope.turn_id if scope else None)
        if scope is not None:
            claim = await edge.idempotency.claim(scope, fingerprint("POST", request.url.path, document))
            if isinstance(claim, Replay):
                return _replayed(complete, stream, include_usage, claim.answer)
            keyed = _Keyed(edge.idempotency, claim)
        call = edge.orchestrator.Complete(
            complete,
            timeout=edge.settings.completion_timeout_seconds,
        )
        first = await call.read()
        created = int(time.time())
        if stream:
            return StreamingResponse(
                _chunks(complete, created, first, call, include_usage, keyed),
                media_type="text/event-stream",
                headers=SSE_HEADERS,
            )
        done = await _done(first, call)
    except BaseException as exc:
        await keyed.abandoned()
        error = openai_error(exc)
        if error is None:
            raise
        return error.response()
    await keyed.answered(created, done)
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
    complete: pb.CompleteRequest,
    created: int,
    first: object,
    call: CompleteCall,
    include_usage: bool,
    keyed: _Keyed,
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
                await keyed.answered(created, done)
                for chunk in _ending(complete, created, done, include_usage):
                    yield chunk
                break
            response = await call.read()
        else:
            error = OpenAIError(HTTPStatus.BAD_GATEWAY, "the orchestrator ended the turn without its end")
            yield _data(error.document())
            return
        yield b"data: [DONE]\n\n"
    except grpc.aio.AioRpcError as exc:
        yield _data(from_rpc(exc).document())
    finally:
        call.cancel()  # the client left early, or the stream is over: either way nothing more is read
        await keyed.abandoned()  # no end reached: a retry runs afresh (nothing of it was billed)


ROUTES = [
    ApiRoute(
        method="POST",
        path="/v1/chat/completions",
        operation_id="createChatCompletion",
        summary=(
            "OpenAI-compatible chat completion: one turn of the agent named by `model` on the given "
            "messages (stream: true answers chat.completion.chunk server-sent events); with the "
            "client's own `tools`, the agent's calls come back as `tool_calls` (finish reason "
            "`tool_calls`) for the client to run and answer with `tool` messages"
        ),
        handler=chat_completions,
        body=Content(name="ChatCompletionRequest", schema=CHAT_REQUEST_SCHEMA),
        response=Content(name="ChatCompletion", schema=CHAT_RESPONSE_SCHEMA),
        errors=(400, 401, 403, 404, 413, 415, 429, 503),
        error=Content(name="OpenAIError", schema=OPENAI_ERROR_SCHEMA),
        tags=("openai",),
    ),
]
