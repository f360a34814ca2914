"""The OpenAI Chat Completions wire format, both ways: a request body read into a CompleteRequest,
and the `chat.completion`, `chat.completion.chunk` and error documents built from the answer.

Only what MACP can honour is accepted: the model is an agent id; messages are system (or
developer), user and assistant text (a string, or a list of `text` parts); `max_tokens` (or
`max_completion_tokens`), `temperature`, `stream` and `stream_options.include_usage`. Parameters
that only tune sampling in ways the agent's provider settings decide (`top_p`, penalties, `seed`,
`user`, ...) are accepted and ignored, as OpenAI-compatible servers commonly do; anything else
(tools, images, `n` > 1) is refused naming the parameter, in OpenAI's error shape.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.edge.events import violations

ROLES = {
    "system": pb.COMPLETION_ROLE_SYSTEM,
    "developer": pb.COMPLETION_ROLE_SYSTEM,
    "user": pb.COMPLETION_ROLE_USER,
    "assistant": pb.COMPLETION_ROLE_ASSISTANT,
}
IGNORED = frozenset(
    {
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "user",
        "metadata",
        "store",
        "stop",
        "logit_bias",
    }
)
FINISH_REASONS = {
    pb.TURN_OUTCOME_COMPLETED: "stop",
    pb.TURN_OUTCOME_TRUNCATED: "length",
    pb.TURN_OUTCOME_CANCELLED: "stop",
    pb.TURN_OUTCOME_INTERRUPTED: "stop",
}
# OpenAI's error `type` per HTTP status (its SDKs pick the exception class by status).
ERROR_TYPES = {
    HTTPStatus.BAD_REQUEST: "invalid_request_error",
    HTTPStatus.UNAUTHORIZED: "authentication_error",
    HTTPStatus.FORBIDDEN: "permission_error",
    HTTPStatus.NOT_FOUND: "invalid_request_error",
    HTTPStatus.CONFLICT: "invalid_request_error",
    HTTPStatus.TOO_MANY_REQUESTS: "insufficient_quota",
}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(
        self, status: HTTPStatus, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def document(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _bad(param: str, message: str) -> OpenAIError:
    return OpenAIError(HTTPStatus.BAD_REQUEST, f"{param}: {message}", param=param, code="invalid_value")


def _text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(param, "must be a string or a list of text parts")
    texts = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise _bad(where, 'only {"type": "text", "text": "..."} parts are supported')
        texts.append(part["text"])
    return "".join(texts)


def _number(document: Mapping[str, Any], name: str, *, whole: bool) -> Any:
    value = document.get(name)
    if value is None:
        return None
    # bool is an int in Python, not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
        raise _bad(name, f"must be {'a whole number' if whole else 'a number'}")
    # The proto fields are int32: a larger number would fail building the request (a 500).
    if whole and not -(2**31) <= value < 2**31:
        raise _bad(name, "is out of range (a 32-bit integer)")
    return value


def complete_request(
    document: Mapping[str, Any], turn_id: str | None = None
) -> tuple[pb.CompleteRequest, bool, bool]:
    """(the CompleteRequest, stream?, include usage in the stream?) of a request body."""
    known = {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "n",
    }
    for name in document:
        if name not in known and name not in IGNORED:
            raise _bad(name, "not supported by this endpoint")
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "required: the id of the agent that answers")
    try:
        uuid.UUID(model)
    except ValueError:
        raise OpenAIError(
            HTTPStatus.NOT_FOUND,
            f"The model `{model}` does not exist: the model is an agent id (a UUID)",
            param="model",
            code="model_not_found",
        ) from None
    if document.get("n", 1) != 1:
        raise _bad("n", "only 1 is supported")
    stream = document.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", "must be true or false")
    options = document.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options", "must be an object")
    include_usage = options.get("include_usage", False) is True
    messages = document.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "required: a non-empty list")
    request = pb.CompleteRequest(turn_id=turn_id or str(uuid.uuid4()), agent_id=model)
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _bad(where, "must be an object")
        role = ROLES.get(message.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise _bad(f"{where}.role", f"must be one of {', '.join(ROLES)}")
        text = _text(message.get("content"), f"{where}.content")
        if not text:
            raise _bad(f"{where}.content", "must not be empty")
        request.messages.add(role=role, text=text)
    max_tokens = _number(document, "max_completion_tokens", whole=True) or _number(
        document, "max_tokens", whole=True
    )
    if max_tokens is not None:
        request.max_tokens = max_tokens
    temperature = _number(document, "temperature", whole=False)
    if temperature is not None:
        request.temperature = float(temperature)
    problem = violations(request, {})
    if problem is not None:
        raise _bad(problem.split(":", 1)[0].split(".", 1)[0], problem.split(": ", 1)[-1])
    return request, stream, include_usage


def completion_id(request: pb.CompleteRequest) -> str:
    return f"chatcmpl-{uuid.UUID(request.turn_id).hex}"


def usage_document(done: pb.CompletionDone) -> dict[str, int]:
    prompt, completion = done.usage.input_tokens, done.usage.output_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(done: pb.CompletionDone) -> str:
    return FINISH_REASONS.get(done.outcome, "stop")


def completion_document(request: pb.CompleteRequest, created: int, done: pb.CompletionDone) -> dict[str, Any]:
    return {
        "id": completion_id(request),
        "object": "chat.completion",
        "created": created,
        "model": request.agent_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": done.text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(done),
            }
        ],
        "usage": usage_document(done),
        "system_fingerprint": None,
    }


def chunk_document(
    request: pb.CompleteRequest,
    created: int,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One `chat.completion.chunk`; `delta` None makes the usage-only chunk (no choices)."""
    document: dict[str, Any] = {
        "id": completion_id(request),
        "object": "chat.completion.chunk",
        "created": created,
        "model": request.agent_id,
        "system_fingerprint": None,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        document["usage"] = usage
    return document


CHAT_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "format": "uuid", "description": "the id of the agent that answers"},
        "messages": {
            "type": "array",
            "minItems": 1,
            "maxItems": 500,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"type": "string", "enum": list(ROLES)},
                    "content": {
                        "oneOf": [
                            {"type": "string", "minLength": 1},
                            {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["type", "text"],
                                    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                                },
                            },
                        ]
                    },
                },
            },
        },
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 200000},
        "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 200000},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "n": {"type": "integer", "const": 1},
    },
}
CHAT_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "a chat.completion; with stream: true, text/event-stream of `data: <chat.completion.chunk>` "
        "lines ending with `data: [DONE]`"
    ),
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}},
        "usage": {
            "type": "object",
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "completion_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
        },
    },
}
OPENAI_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
