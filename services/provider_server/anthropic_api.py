"""`POST /v1/messages`: the Anthropic Messages API, as JSON or as its SSE event sequence.

The stream is the one Anthropic documents: message_start, content_block_start, ping, one
content_block_delta per token, content_block_stop, message_delta (stop reason and output usage),
message_stop. Errors use Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`, with
529 as `overloaded_error`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.provider_server.answers import Answer, compose_answer
from services.provider_server.protocol import (
    ProtocolError,
    ProviderState,
    SseResponse,
    answer_stream,
    content_text,
    read_json,
    require,
    sse,
)

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


def _prompt(body: Mapping[str, Any]) -> list[str]:
    system = body.get("system")
    texts = [content_text(system, "system")] if system is not None else []
    messages = require(body, "messages", list, "a list of messages")
    if not messages:
        raise ProtocolError(400, "messages: at least one message is required")
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise ProtocolError(400, f"{where}.role: expected 'user' or 'assistant'")
        texts.append(content_text(message.get("content"), f"{where}.content"))
    return texts


def _message(message_id: str, model: str, answer: Answer, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": answer.input_tokens, "output_tokens": 0},
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
        prompt = _prompt(body)
        behavior = state.behavior_for(request, model)
    except ProtocolError as exc:
        return error_response(exc.status, exc.message)
    if behavior.slow:
        await asyncio.sleep(behavior.slow)
    if behavior.status is not None:
        return error_response(behavior.status, f"injected failure {behavior.status}")
    state.remember(prompt)
    answer = compose_answer(prompt, max_tokens, behavior.tokens)
    message_id = f"msg_{uuid.uuid4().hex[:24]}"
    headers = {"request-id": f"req_{uuid.uuid4().hex}"}
    stop_reason = "max_tokens" if answer.truncated else "end_turn"
    if not body.get("stream"):
        message = _message(message_id, model, answer, [{"type": "text", "text": answer.text}])
        message["stop_reason"] = stop_reason
        message["usage"]["output_tokens"] = answer.output_tokens
        return JSONResponse(message, headers=headers)
    head = [
        sse({"type": "message_start", "message": _message(message_id, model, answer, [])}, "message_start"),
        sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        ),
        sse({"type": "ping"}, "ping"),
    ]
    tail = [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": answer.output_tokens},
            },
            "message_delta",
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    chunks = answer_stream(head, answer.pieces(), _delta, tail, MALFORMED, behavior)
    return SseResponse(chunks, state, headers)
