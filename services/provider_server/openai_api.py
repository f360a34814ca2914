"""`POST /v1/chat/completions`: OpenAI Chat Completions, as JSON or as SSE chunks.

A stream is `chat.completion.chunk` objects (the role first, then one content delta per token,
then the finish reason), with `stream_options.include_usage` one more chunk with empty `choices`
and the usage, and finally `data: [DONE]`. A reply of tool calls (see tool_use.py for when the
model makes them) is `message.tool_calls`, or streamed `delta.tool_calls` entries (the first of a
call with its index, id, type and name, then pieces of its arguments' JSON), with finish reason
`tool_calls`. Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.provider_server.answers import Answer
from services.provider_server.openai_request import read_request
from services.provider_server.protocol import (
    ProtocolError,
    ProviderState,
    SseResponse,
    answer_stream,
    as_is,
    optional_int,
    read_json,
    require,
)
from services.provider_server.tool_use import PlannedCall, ToolCalls, reply_to

ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
MALFORMED = b'data: {"id":"chatcmpl-broken","choices":[{"delta":\n\n'


def error_response(status: int, message: str, param: str | None = None) -> Response:
    kind, code = ERROR_TYPES.get(status, ("server_error", None))
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
    if status == 429:
        headers["retry-after"] = "1"
    return JSONResponse(body, status_code=status, headers=headers)


def _usage(reply: Answer | ToolCalls) -> dict[str, int]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }


def _tool_call(call: PlannedCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments_json},
    }


def _chunk_data(base: dict[str, Any], choices: list[dict[str, Any]], **extra: Any) -> bytes:
    return f"data: {json.dumps({**base, 'choices': choices, **extra}, separators=(',', ':'))}\n\n".encode()


async def chat_completions(request: Request) -> Response:
    state: ProviderState = request.app.state.provider
    try:
        authorization = request.headers.get("authorization", "")
        if not authorization.lower().startswith("bearer ") or not authorization[7:].strip():
            raise ProtocolError(401, "an Authorization: Bearer <key> header is required")
        body = await read_json(request)
        model = require(body, "model", str, "a model name")
        max_tokens = optional_int(body, "max_completion_tokens") or optional_int(body, "max_tokens")
        read = read_request(body)
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise ProtocolError(400, "stream_options: expected an object")
        behavior = state.behavior_for(request, model)
    except ProtocolError as exc:
        return error_response(exc.status, exc.message)
    if (status := await behavior.injected_status()) is not None:
        return error_response(status, f"injected failure {status}")
    state.remember(read.dialogue.prompt)
    reply = reply_to(read.dialogue, read.tools, read.choice, max_tokens, behavior.tokens, "call_")
    if isinstance(reply, ToolCalls):
        finish_reason = "tool_calls"
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [_tool_call(call) for call in reply.calls],
        }
    else:
        finish_reason = "length" if reply.truncated else "stop"
        message = {"role": "assistant", "content": reply.text, "refusal": None}
    headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if not body.get("stream"):
        completion = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": _usage(reply),
        }
        return JSONResponse(completion, headers=headers)
    include_usage = bool(options.get("include_usage"))
    base: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_local",
    }
    # With include_usage every chunk carries `"usage": null` but the last one (OpenAI does this).
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _chunk_data(base, [{"index": 0, "delta": delta, "finish_reason": finish}], **extra)

    tail = [chunk({}, finish_reason)]
    if include_usage:
        tail.append(_chunk_data(base, [], usage=_usage(reply)))
    tail.append(b"data: [DONE]\n\n")
    if isinstance(reply, ToolCalls):
        head = [chunk({"role": "assistant", "content": None})]
        chunks = answer_stream(head, _tool_call_chunks(reply, chunk), as_is, tail, MALFORMED, behavior)
    else:
        head = [_chunk_data(base, [{"index": 0, "delta": {"role": "assistant", "content": ""}}], **extra)]
        pieces = reply.pieces()
        chunks = answer_stream(
            head, pieces, lambda piece: chunk({"content": piece}), tail, MALFORMED, behavior
        )
    return SseResponse(chunks, state, headers)


def _tool_call_chunks(reply: ToolCalls, chunk: Callable[[dict[str, Any]], bytes]) -> Iterator[bytes]:
    """One item per piece of a call's arguments, the first of a call led by the chunk that opens it
    (index, id, type, name; so a `cut` or `malformed` behavior counts argument pieces)."""
    for index, call in enumerate(reply.calls):
        for number, piece in enumerate(call.pieces()):
            opening = b""
            if number == 0:
                function = {"name": call.name, "arguments": ""}
                opening = chunk(
                    {
                        "tool_calls": [
                            {"index": index, "id": call.id, "type": "function", "function": function}
                        ]
                    }
                )
            yield opening + chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
