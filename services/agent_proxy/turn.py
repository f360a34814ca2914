"""From a GenerateRequest to the provider-neutral Turn every adapter translates.

Providers know two roles and want them alternating, starting with the user: speakers' names are
folded into the text, consecutive messages of one role merged. Tool use keeps its structure through
that merge: an assistant message keeps its calls, in order, and each CHAT_ROLE_TOOL message becomes
a result in the user message that follows the calls, which both protocols send before that
message's text (Anthropic: tool_result blocks first; OpenAI: tool messages right after the call).
So every call is answered in the message right after it, as both providers require; the history is
checked for that first, and a broken one is refused here (INVALID_ARGUMENT naming the message) rather
than by the provider.

When no tools are offered, calls and results in the history are written into the text instead:
Anthropic refuses tool blocks in a request without tools, and the model still reads what happened.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from google.protobuf import json_format, struct_pb2
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb

from services.agent_proxy.provider import ToolCall, ToolChoice, ToolResult, ToolSpec, Turn, TurnMessage
from services.runtime.errors import InvalidArgument

OPENING = "(the conversation so far)"
CHOICE_MODES: dict[int, Literal["auto", "none", "required", "tool"]] = {
    pb.TOOL_CHOICE_MODE_UNSPECIFIED: "auto",
    pb.TOOL_CHOICE_MODE_AUTO: "auto",
    pb.TOOL_CHOICE_MODE_NONE: "none",
    pb.TOOL_CHOICE_MODE_REQUIRED: "required",
    pb.TOOL_CHOICE_MODE_TOOL: "tool",
}


def build_turn(request: pb.GenerateRequest, default_max_tokens: int) -> Turn:
    tools = tool_specs(request.tools)
    check_pairing(request.messages)
    names = {call.id: call.name for message in request.messages for call in message.tool_calls}
    merged: list[TurnMessage] = []
    for message in request.messages:
        part = _part(message, names, structured=bool(tools))
        if merged and merged[-1].role == part.role:
            merged[-1] = _merge(merged[-1], part)
        else:
            merged.append(part)
    if merged[0].role == "assistant":
        merged.insert(0, TurnMessage("user", OPENING))
    generation = request.generation
    return Turn(
        system=request.system_prompt,
        messages=tuple(merged),
        max_tokens=generation.max_tokens if generation.HasField("max_tokens") else default_max_tokens,
        temperature=generation.temperature if generation.HasField("temperature") else None,
        tools=tools,
        tool_choice=tool_choice(request) if tools else None,
    )


def tool_choice(request: pb.GenerateRequest) -> ToolChoice | None:
    """The request's tool choice (None when it sets none); a named tool must be one offered."""
    if not request.HasField("tool_choice"):
        return None
    choice = request.tool_choice
    if choice.mode == pb.TOOL_CHOICE_MODE_TOOL and all(tool.name != choice.name for tool in request.tools):
        raise InvalidArgument(f"tool_choice.name: {choice.name!r} is not one of the offered tools")
    return ToolChoice(CHOICE_MODES[choice.mode], choice.name, parallel=not choice.disable_parallel_calls)


def tool_specs(tools: Sequence[pb.ToolDefinition]) -> tuple[ToolSpec, ...]:
    """The offered tools, each with an object schema and a name of its own."""
    specs: list[ToolSpec] = []
    for index, tool in enumerate(tools):
        schema = json_value(tool.input_schema)
        if schema.get("type") != "object":
            raise InvalidArgument(
                f"tools[{index}].input_schema: expected a JSON Schema of type 'object', "
                f"got type {schema.get('type')!r}"
            )
        if not isinstance(schema.get("properties", {}), dict):
            raise InvalidArgument(f"tools[{index}].input_schema.properties: expected an object")
        if any(spec.name == tool.name for spec in specs):
            raise InvalidArgument(f"tools[{index}].name: {tool.name!r} is offered twice")
        specs.append(ToolSpec(name=tool.name, description=tool.description, input_schema=schema))
    return tuple(specs)


def check_pairing(messages: Sequence[pb.ChatMessage]) -> None:
    """Each tool message answers a call of the last assistant message, and each call is answered
    before the assistant speaks again (or the history ends)."""
    pending: dict[str, str] = {}  # call id -> where the call is, for the error
    seen: set[str] = set()
    for index, message in enumerate(messages):
        if message.role == pb.CHAT_ROLE_ASSISTANT:
            _refuse_unanswered(pending, f"messages[{index}]")
            for number, call in enumerate(message.tool_calls):
                where = f"messages[{index}].tool_calls[{number}]"
                if call.id in seen:
                    raise InvalidArgument(f"{where}.id: {call.id!r} is the id of an earlier call")
                seen.add(call.id)
                pending[call.id] = where
        elif message.role == pb.CHAT_ROLE_TOOL:
            call_id = message.tool_result.tool_call_id
            if call_id not in pending:
                raise InvalidArgument(
                    f"messages[{index}].tool_result.tool_call_id: {call_id!r} answers no unanswered "
                    "call of the assistant message before it"
                )
            del pending[call_id]
    _refuse_unanswered(pending, "the end of messages")


def _refuse_unanswered(pending: dict[str, str], before: str) -> None:
    if pending:
        call_id, where = next(iter(pending.items()))
        raise InvalidArgument(
            f"{where}: call {call_id!r} has no result (a CHAT_ROLE_TOOL message) before {before}"
        )


def _part(message: pb.ChatMessage, names: dict[str, str], structured: bool) -> TurnMessage:
    if message.role == pb.CHAT_ROLE_ASSISTANT:
        calls = tuple(ToolCall(c.id, c.name, json_value(c.arguments)) for c in message.tool_calls)
        if structured:
            return TurnMessage("assistant", message.text, tool_calls=calls)
        written = [f"(called {call.name} with {json.dumps(call.arguments)})" for call in calls]
        return TurnMessage("assistant", _joined([message.text, *written]))
    if message.role == pb.CHAT_ROLE_TOOL:
        result = message.tool_result
        if structured:
            return TurnMessage(
                "user", "", tool_results=(ToolResult(result.tool_call_id, message.text, result.is_error),)
            )
        outcome = "failed" if result.is_error else "returned"
        return TurnMessage("user", f"({names[result.tool_call_id]} {outcome}: {message.text})")
    return TurnMessage("user", f"{message.name}: {message.text}" if message.name else message.text)


def _merge(first: TurnMessage, second: TurnMessage) -> TurnMessage:
    return replace(
        first,
        text=_joined([first.text, second.text]),
        tool_calls=first.tool_calls + second.tool_calls,
        tool_results=first.tool_results + second.tool_results,
    )


def _joined(texts: Sequence[str]) -> str:
    return "\n\n".join(text for text in texts if text)


def prompt_characters(turn: Turn) -> int:
    """The prompt's size, for a usage estimate when the provider reports none."""
    size = len(turn.system)
    for message in turn.messages:
        size += len(message.text) + sum(len(result.text) for result in message.tool_results)
        size += sum(len(call.name) + len(json.dumps(call.arguments)) for call in message.tool_calls)
    for tool in turn.tools:
        size += len(tool.name) + len(tool.description) + len(json.dumps(tool.input_schema))
    return size


def json_value(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as the JSON object it was: Struct keeps every number as a double, so an integral
    one goes back as an integer (what the model or the schema's author most likely wrote); its map
    keeps no key order, so keys are sorted, for the same prompt from the same Struct every time."""
    return _integral(json_format.MessageToDict(struct))  # type: ignore[no-any-return]


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def as_struct(arguments: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(arguments)
    return struct
