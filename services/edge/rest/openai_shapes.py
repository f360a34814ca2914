"""The OpenAI Chat Completions wire format, both ways: a request body read into a CompleteRequest,
and the `chat.completion`, `chat.completion.chunk` and error documents built from the answer.

Only what MACP can honour is accepted: the model is an agent id; messages are system (or
developer), user and assistant text (a string, or a list of `text` parts), an assistant's tool
calls and tool results; `tools`, `tool_choice` and `parallel_tool_calls` (openai_tools.py);
`max_tokens` (or `max_completion_tokens`), `temperature`, `stream` and
`stream_options.include_usage`; `response_format` of type `text` (JSON modes are refused).
Parameters that only tune sampling in ways the agent's provider settings decide (`top_p`,
penalties, `seed`, `user`, ...) are accepted and ignored, as OpenAI-compatible servers commonly
do; anything else (images, the legacy `functions`, `n` > 1) is refused naming the parameter, in
OpenAI's error shape.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.edge.events import violations
from services.edge.rest.openai_errors import bad_param, model_not_found
from services.edge.rest.openai_tools import (
    TOOL_CALLS_SCHEMA,
    TOOL_CHOICE_SCHEMA,
    TOOLS_SCHEMA,
    tool_call_id_of,
    tool_calls_document,
    tool_calls_of,
    tool_choice_of,
    tools_of,
)

ROLES = {
    "system": pb.COMPLETION_ROLE_SYSTEM,
    "developer": pb.COMPLETION_ROLE_SYSTEM,
    "user": pb.COMPLETION_ROLE_USER,
    "assistant": pb.COMPLETION_ROLE_ASSISTANT,
    "tool": pb.COMPLETION_ROLE_TOOL,
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


def _text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_param(param, "must be a string or a list of text parts")
    texts = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise bad_param(where, 'only {"type": "text", "text": "..."} parts are supported')
        texts.append(part["text"])
    return "".join(texts)


def _number(document: Mapping[str, Any], name: str, *, whole: bool) -> Any:
    value = document.get(name)
    if value is None:
        return None
    # bool is an int in Python, not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
        raise bad_param(name, f"must be {'a whole number' if whole else 'a number'}")
    # The proto fields are int32: a larger number would fail building the request (a 500).
    if whole and not -(2**31) <= value < 2**31:
        raise bad_param(name, "is out of range (a 32-bit integer)")
    return value


def is_model_id(model: str) -> bool:
    """Whether `model` can name an agent: its id, a UUID (anything else names no agent)."""
    try:
        uuid.UUID(model)
    except ValueError:
        return False
    return True


def _include_usage(options: Any, stream: bool) -> bool:
    """`stream_options.include_usage`: whether a stream ends with a usage chunk. As with OpenAI, the
    options go only with `stream: true`; other options (`include_obfuscation`) change nothing here."""
    if options is None:
        return False
    if not isinstance(options, dict):
        raise bad_param("stream_options", "must be an object")
    if not stream:
        raise bad_param("stream_options", "only allowed with stream: true")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_param("stream_options.include_usage", "must be true or false")
    return include_usage


def _text_format(response_format: Any) -> None:
    """`response_format`: text, what an agent answers, is accepted; JSON mode and JSON schemas are
    refused by name, since the agent's provider settings, not the request, decide how it answers."""
    if response_format is None:
        return
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise bad_param("response_format", 'must be an object with a "type"')
    if response_format["type"] != "text":
        kind = response_format["type"]
        raise bad_param("response_format", f"{kind!r} is not supported: an agent answers in text only")


def _message(message: Any, where: str) -> pb.CompletionMessage:
    """One of the request's messages. An assistant's may be tool calls alone (content null), a tool
    message's content may be empty; whether each call has its result is the orchestrator's check."""
    if not isinstance(message, dict):
        raise bad_param(where, "must be an object")
    role = ROLES.get(message.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise bad_param(f"{where}.role", f"must be one of {', '.join(ROLES)}")
    # Each field belongs to one role: sent on another, it would be dropped unread.
    if role != pb.COMPLETION_ROLE_ASSISTANT and message.get("tool_calls") is not None:
        raise bad_param(f"{where}.tool_calls", "only an assistant message carries tool calls")
    if role != pb.COMPLETION_ROLE_TOOL and message.get("tool_call_id") is not None:
        raise bad_param(f"{where}.tool_call_id", "only a tool message answers a tool call")
    calls = (
        tool_calls_of(message.get("tool_calls"), f"{where}.tool_calls")
        if role == pb.COMPLETION_ROLE_ASSISTANT
        else []
    )
    content = message.get("content")
    text = "" if content is None and calls else _text(content, f"{where}.content")
    if role == pb.COMPLETION_ROLE_TOOL:
        return pb.CompletionMessage(
            role=role,
            text=text,
            tool_call_id=tool_call_id_of(message.get("tool_call_id"), f"{where}.tool_call_id"),
        )
    if not text and not calls:
        raise bad_param(f"{where}.content", "must not be empty")
    return pb.CompletionMessage(role=role, text=text, tool_calls=calls)


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
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
    }
    for name in document:
        if name not in known and name not in IGNORED:
            raise bad_param(name, "not supported by this endpoint")
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise bad_param("model", "required: the id of the agent that answers")
    if not is_model_id(model):
        raise model_not_found(model)
    if document.get("n", 1) != 1:
        raise bad_param("n", "only 1 is supported")
    stream = document.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_param("stream", "must be true or false")
    include_usage = _include_usage(document.get("stream_options"), stream)
    _text_format(document.get("response_format"))
    messages = document.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_param("messages", "required: a non-empty list")
    tools = tools_of(document.get("tools"))
    request = pb.CompleteRequest(turn_id=turn_id or str(uuid.uuid4()), agent_id=model, tools=tools)
    choice = tool_choice_of(document.get("tool_choice"), document.get("parallel_tool_calls"), tools)
    if choice is not None:
        request.tool_choice.CopyFrom(choice)
    for index, message in enumerate(messages):
        request.messages.append(_message(message, f"messages[{index}]"))
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
        raise bad_param(problem.split(":", 1)[0].split(".", 1)[0], problem.split(": ", 1)[-1])
    return request, stream, include_usage


def completion_id(request: pb.CompleteRequest) -> str:
    return f"chatcmpl-{uuid.UUID(request.turn_id).hex}"


def usage_document(done: pb.CompletionDone) -> dict[str, int]:
    prompt, completion = done.usage.input_tokens, done.usage.output_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(done: pb.CompletionDone) -> str:
    if done.tool_calls:
        return "tool_calls"
    return FINISH_REASONS.get(done.outcome, "stop")


def message_document(done: pb.CompletionDone) -> dict[str, Any]:
    """The answer's `message`: its text (null when it is tool calls alone) and its tool calls."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": done.text if done.text or not done.tool_calls else None,
        "refusal": None,
    }
    if done.tool_calls:
        message["tool_calls"] = tool_calls_document(done.tool_calls)
    return message


def completion_document(request: pb.CompleteRequest, created: int, done: pb.CompletionDone) -> dict[str, Any]:
    return {
        "id": completion_id(request),
        "object": "chat.completion",
        "created": created,
        "model": request.agent_id,
        "choices": [
            {
                "index": 0,
                "message": message_document(done),
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
                "required": ["role"],
                "description": (
                    "content is required but for an assistant message with tool_calls (null, or "
                    "text said with them); a tool message answers a call of the assistant message "
                    "before it by tool_call_id, and each call needs its answer before any other message"
                ),
                "properties": {
                    "role": {"type": "string", "enum": list(ROLES)},
                    "tool_calls": TOOL_CALLS_SCHEMA,
                    "tool_call_id": {"type": "string", "minLength": 1, "maxLength": 128},
                    "content": {
                        "oneOf": [
                            {"type": "null"},
                            {"type": "string"},
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
        "stream_options": {
            "type": "object",
            "description": "only with stream: true; include_usage: a last chunk carries the usage",
            "properties": {"include_usage": {"type": "boolean"}},
        },
        "response_format": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"const": "text", "description": "JSON modes are refused (400)"}},
        },
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 200000},
        "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 200000},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "n": {"type": "integer", "const": 1},
        "tools": TOOLS_SCHEMA,
        "tool_choice": TOOL_CHOICE_SCHEMA,
        "parallel_tool_calls": {"type": "boolean", "description": "false: at most one tool call"},
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
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "message": {
                        "type": "object",
                        "properties": {
                            "role": {"const": "assistant"},
                            "content": {
                                "type": ["string", "null"],
                                "description": "null for tool calls alone",
                            },
                            "refusal": {"type": "null"},
                            "tool_calls": TOOL_CALLS_SCHEMA,
                        },
                    },
                    "finish_reason": {"type": "string", "enum": ["stop", "length", "tool_calls"]},
                },
            },
        },
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
