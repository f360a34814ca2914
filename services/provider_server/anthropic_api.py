"""`POST /v1/messages`: the Anthropic Messages API, as JSON or as its SSE event sequence.

The stream is the one Anthropic documents: message_start, content_block_start, ping, one
content_block_delta per token, content_block_stop, message_delta (stop reason and output usage),
message_stop. A reply of tool calls (see tool_use.py for when the model makes them) has one
`tool_use` block per call instead, streamed as content_block_start (the id and name, input `{}`),
input_json_delta events carrying pieces of the input's JSON, content_block_stop, and stop reason
`tool_use`. Errors use Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`, with
529 as `overloaded_error`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.provider_server.answers import Answer
from services.provider_server.anthropic_request import read_request
from services.provider_server.protocol import (
    ProtocolError,
    ProviderState,
    SseResponse,
    answer_stream,
    as_is,
    read_json,
    require,
    sse,
)
from services.provider_server.tool_use import PlannedCall, ToolCalls, reply_to

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
MALFORMED = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":\n\n'


def error_response(status: int, message: str) -> Response:
    kind = ERROR_TYPES.get(status, "api_error")
    headers = {"request-id": f"req_{uuid.uuid4().hex}"}
    if status == 429:
        headers["retry-after"] = "1"
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _message(
    message_id: str, model: str, reply: Answer | ToolCalls, content: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": 0},
    }


def _tool_use_block(call: PlannedCall, with_input: bool) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": call.id,
        "name": call.name,
        "input": call.arguments if with_input else {},
    }


def _delta(piece: str) -> bytes:
    text = json.dumps(piece)
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":' + text.encode() + b"}}\n\n"
    )


async def messages(request: Request) -> Response:
    state: ProviderState = request.app.state.provider
    try:
        # Anthropic takes `x-api-key`; recent SDKs send the key as `Authorization: Bearer` instead.
        if not request.headers.get("x-api-key") and not request.headers.get("authorization"):
            raise ProtocolError(401, "an x-api-key or Authorization header is required")
        body = await read_json(request)
        model = require(body, "model", str, "a model name")
        max_tokens = require(body, "max_tokens", int, "a positive integer")
        if max_tokens < 1:
            raise ProtocolError(400, "max_tokens: expected a positive integer")
        read = read_request(body)
        behavior = state.behavior_for(request, model)
    except ProtocolError as exc:
        return error_response(exc.status, exc.message)
    if (status := await behavior.injected_status()) is not None:
        return error_response(status, f"injected failure {status}")
    state.remember(read.dialogue.prompt)
    reply = reply_to(read.dialogue, read.tools, read.choice, max_tokens, behavior.tokens, "toolu_")
    message_id = f"msg_{uuid.uuid4().hex[:24]}"
    headers = {"request-id": f"req_{uuid.uuid4().hex}"}
    if isinstance(reply, ToolCalls):
        stop_reason = "tool_use"
        content = [_tool_use_block(call, with_input=True) for call in reply.calls]
    else:
        stop_reason = "max_tokens" if reply.truncated else "end_turn"
        content = [{"type": "text", "text": reply.text}]
    if not body.get("stream"):
        message = _message(message_id, model, reply, content)
        message["stop_reason"] = stop_reason
        message["usage"]["output_tokens"] = reply.output_tokens
        return JSONResponse(message, headers=headers)
    tail = [
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": reply.output_tokens},
            },
            "message_delta",
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    start = sse({"type": "message_start", "message": _message(message_id, model, reply, [])}, "message_start")
    if isinstance(reply, ToolCalls):
        head = [start, sse({"type": "ping"}, "ping")]
        chunks = answer_stream(head, _tool_use_events(reply), as_is, tail, MALFORMED, behavior)
    else:
        head = [
            start,
            sse(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start",
            ),
            sse({"type": "ping"}, "ping"),
        ]
        text_tail = [sse({"type": "content_block_stop", "index": 0}, "content_block_stop"), *tail]
        chunks = answer_stream(head, reply.pieces(), _delta, text_tail, MALFORMED, behavior)
    return SseResponse(chunks, state, headers)


def _tool_use_events(reply: ToolCalls) -> Iterator[bytes]:
    """One item per input_json_delta, the first of a block with its content_block_start, the last
    with its content_block_stop (so a `cut` or `malformed` behavior counts argument pieces)."""
    for index, call in enumerate(reply.calls):
        pieces = call.pieces()
        for number, piece in enumerate(pieces):
            events = []
            if number == 0:
                block = _tool_use_block(call, with_input=False)
                events.append(
                    sse(
                        {"type": "content_block_start", "index": index, "content_block": block},
                        "content_block_start",
                    )
                )
            delta = {"type": "input_json_delta", "partial_json": piece}
            events.append(
                sse({"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta")
            )
            if number == len(pieces) - 1:
                events.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
            yield b"".join(events)
