"""`POST /v1/chat/completions`: OpenAI Chat Completions, as JSON or as SSE chunks.

A stream is `chat.completion.chunk` objects (the role first, then one content delta per token,
then the finish reason), with `stream_options.include_usage` one more chunk with empty `choices`
and the usage, and finally `data: [DONE]`. Errors use OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import json
import time
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
    optional_int,
    read_json,
    require,
)

ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
MALFORMED = b'data: {"id":"chatcmpl-broken","choices":[{"delta":\n\n'
ROLES = ("system", "developer", "user", "assistant", "tool")


def error_response(status: int, message: str, param: str | None = None) -> Response:
    kind, code = ERROR_TYPES.get(status, ("server_error", None))
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
    if status == 429:
        headers["retry-after"] = "1"
    return JSONResponse(body, status_code=status, headers=headers)


def _prompt(body: Mapping[str, Any]) -> list[str]:
    messages = require(body, "messages", list, "a list of messages")
    if not messages:
        raise ProtocolError(400, "messages: at least one message is required")
    texts = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ProtocolError(400, f"{where}.role: expected one of {', '.join(ROLES)}")
        texts.append(content_text(message.get("content") or "", f"{where}.content"))
    return texts


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
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
        prompt = _prompt(body)
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise ProtocolError(400, "stream_options: expected an object")
        behavior = state.behavior_for(request, model)
    except ProtocolError as exc:
        return error_response(exc.status, exc.message)
    if behavior.slow:
        await asyncio.sleep(behavior.slow)
    if behavior.status is not None:
        return error_response(behavior.status, f"injected failure {behavior.status}")
    state.remember(prompt)
    answer = compose_answer(prompt, max_tokens, behavior.tokens)
    finish_reason = "length" if answer.truncated else "stop"
    headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if not body.get("stream"):
        completion = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": _usage(answer),
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
    head = [_chunk_data(base, [{"index": 0, "delta": {"role": "assistant", "content": ""}}], **extra)]

    def delta(piece: str) -> bytes:
        return _chunk_data(base, [{"index": 0, "delta": {"content": piece}, "finish_reason": None}], **extra)

    tail = [_chunk_data(base, [{"index": 0, "delta": {}, "finish_reason": finish_reason}], **extra)]
    if include_usage:
        tail.append(_chunk_data(base, [], usage=_usage(answer)))
    tail.append(b"data: [DONE]\n\n")
    chunks = answer_stream(head, answer.pieces(), delta, tail, MALFORMED, behavior)
    return SseResponse(chunks, state, headers)
