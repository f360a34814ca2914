"""Client-side tools in the OpenAI Chat Completions format, both ways: the request's `tools`,
`tool_choice` and `parallel_tool_calls`, and its messages' tool calls, read into the orchestrator's
contract; the calls the agent asked for written back as `message.tool_calls` or as the
`delta.tool_calls` chunks OpenAI streams.

The tools are the client's own: the agent's calls of them end its turn (finish reason
`tool_calls`), the client runs them and sends each result back as a `role: "tool"` message of its
next request. Each refusal names the parameter the way OpenAI does.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb

from services.edge.rest.openai_errors import bad_param

# OpenAI's rule for a function's name (also what the agent proxy contract takes).
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOLS = 128
MAX_CALLS = 64  # tool calls in one assistant message (the contract's bound)
MAX_DESCRIPTION = 4096
MAX_CALL_ID = 128
# A function without `parameters` takes none (OpenAI's reading of an omitted schema).
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
CHOICE_MODES = {
    "auto": proxy_pb.TOOL_CHOICE_MODE_AUTO,
    "none": proxy_pb.TOOL_CHOICE_MODE_NONE,
    "required": proxy_pb.TOOL_CHOICE_MODE_REQUIRED,
}
# JSON numbers a double holds exactly: a whole one of them is written back as an integer.
_EXACT = 2**53


def tools_of(raw: Any) -> list[proxy_pb.ToolDefinition]:
    """The request's `tools` (none when absent)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_param("tools", "must be a list of tools")
    if len(raw) > MAX_TOOLS:
        raise bad_param("tools", f"at most {MAX_TOOLS} tools")
    tools: list[proxy_pb.ToolDefinition] = []
    for index, tool in enumerate(raw):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise bad_param(where, "must be an object")
        function, name = _function(tool, where, tool.get("type"))
        if any(earlier.name == name for earlier in tools):
            raise bad_param(f"{where}.function.name", f"{name!r} is offered twice")
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise bad_param(f"{where}.function.description", "must be a string")
        if len(description) > MAX_DESCRIPTION:
            raise bad_param(f"{where}.function.description", f"at most {MAX_DESCRIPTION} characters")
        parameters = function.get("parameters", NO_PARAMETERS)
        if not isinstance(parameters, dict) or parameters.get("type") != "object":
            raise bad_param(f"{where}.function.parameters", 'must be a JSON Schema of "type": "object"')
        if not isinstance(function.get("strict", False), bool | None):
            raise bad_param(f"{where}.function.strict", "must be true or false")
        schema = struct_pb2.Struct()
        schema.update(parameters)
        tools.append(proxy_pb.ToolDefinition(name=name, description=description, input_schema=schema))
    return tools


def tool_choice_of(
    raw: Any, parallel: Any, tools: Sequence[proxy_pb.ToolDefinition]
) -> proxy_pb.ToolChoice | None:
    """The request's `tool_choice` and `parallel_tool_calls` (None: the model decides, and may call
    several tools at once). Without tools, "auto" and "none" mean nothing and are let be."""
    if parallel is not None and not isinstance(parallel, bool):
        raise bad_param("parallel_tool_calls", "must be true or false")
    if raw is None and parallel is None:
        return None
    choice = proxy_pb.ToolChoice(
        mode=proxy_pb.TOOL_CHOICE_MODE_AUTO, disable_parallel_calls=parallel is False
    )
    if isinstance(raw, str) and raw in CHOICE_MODES:
        choice.mode = CHOICE_MODES[raw]
    elif isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("function"), dict):
        name = raw["function"].get("name")
        if not any(tool.name == name for tool in tools):
            raise bad_param("tool_choice.function.name", "must name one of the request's tools")
        choice.mode, choice.name = proxy_pb.TOOL_CHOICE_MODE_TOOL, name
    elif raw is not None:
        raise bad_param(
            "tool_choice",
            'must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}',
        )
    if not tools:
        if choice.mode == proxy_pb.TOOL_CHOICE_MODE_REQUIRED:
            raise bad_param("tool_choice", '"required" needs tools')
        return None
    return choice


def _function(entry: dict[str, Any], where: str, kind: Any) -> tuple[dict[str, Any], str]:
    """The `function` object of a tool or a tool call at `where`, and its name (OpenAI's rule)."""
    if kind != "function":
        raise bad_param(f"{where}.type", 'must be "function"')
    function = entry.get("function")
    if not isinstance(function, dict):
        raise bad_param(f"{where}.function", "required: an object with the function's name")
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise bad_param(f"{where}.function.name", "must be 1 to 64 letters, digits, '_' or '-'")
    return function, name


def tool_calls_of(raw: Any, where: str) -> list[proxy_pb.ToolCall]:
    """An assistant message's `tool_calls` (at `where`), as the agent made them earlier."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_param(where, "must be a list of tool calls")
    if len(raw) > MAX_CALLS:
        raise bad_param(where, f"at most {MAX_CALLS} tool calls in one message")
    calls = []
    for index, call in enumerate(raw):
        at = f"{where}[{index}]"
        if not isinstance(call, dict):
            raise bad_param(at, "must be an object")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not 0 < len(call_id) <= MAX_CALL_ID:
            raise bad_param(f"{at}.id", f"required: the call's id, 1 to {MAX_CALL_ID} characters")
        # A call's type may be left out (OpenAI's SDKs send it); a tool's may not.
        function, name = _function(call, at, call.get("type", "function"))
        arguments = struct_pb2.Struct()
        arguments.update(_arguments(function.get("arguments"), f"{at}.function.arguments"))
        calls.append(proxy_pb.ToolCall(id=call_id, name=name, arguments=arguments))
    return calls


def tool_call_id_of(raw: Any, where: str) -> str:
    """A tool message's `tool_call_id`: the call whose result it is."""
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_CALL_ID:
        raise bad_param(where, f"required: the id of the tool call answered, 1 to {MAX_CALL_ID} characters")
    return raw


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}  # a call of a function without parameters
    if not isinstance(raw, str):
        raise bad_param(where, "must be a string: the arguments' JSON object")
    try:
        arguments = json.loads(raw)
    except json.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise bad_param(where, "must be a JSON object, written as a string")
    return arguments


def arguments_json(arguments: struct_pb2.Struct) -> str:
    """A call's arguments as OpenAI writes them: a JSON object in a string (whole numbers as
    integers, which a Struct holds as doubles). Keys sorted: a Struct is a map, whose order is not
    kept, and the same call must read the same each time (an Idempotency-Key replay included)."""
    plain = _whole_numbers(json_format.MessageToDict(arguments))
    return json.dumps(plain, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < _EXACT:
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def tool_calls_document(calls: Sequence[proxy_pb.ToolCall]) -> list[dict[str, Any]]:
    """`message.tool_calls` of a chat.completion."""
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": arguments_json(call.arguments)},
        }
        for call in calls
    ]


def tool_call_deltas(calls: Sequence[proxy_pb.ToolCall]) -> list[Mapping[str, Any]]:
    """The `delta`s of the chunks that stream `calls` the way OpenAI does: per call, by its `index`,
    one that opens it (id, type, name, empty arguments), then one with its arguments' text."""
    deltas: list[Mapping[str, Any]] = []
    for index, call in enumerate(calls):
        opened = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        deltas.append({"tool_calls": [opened]})
        arguments = {"index": index, "function": {"arguments": arguments_json(call.arguments)}}
        deltas.append({"tool_calls": [arguments]})
    return deltas


# The OpenAPI document's schemas of the above (the request's and the answer's parts).
_TOOL_CALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "type", "function"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": MAX_CALL_ID},
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name", "arguments"],
            "properties": {
                "name": {"type": "string", "pattern": TOOL_NAME.pattern},
                "arguments": {"type": "string", "description": "the arguments, a JSON object as a string"},
            },
        },
    },
}
TOOL_CALLS_SCHEMA: dict[str, Any] = {"type": "array", "maxItems": MAX_CALLS, "items": _TOOL_CALL_SCHEMA}
TOOLS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "maxItems": MAX_TOOLS,
    "description": (
        "the client's own functions the agent may call: its calls end the turn (finish_reason "
        "tool_calls); the client runs them and sends each result as a `tool` message"
    ),
    "items": {
        "type": "object",
        "required": ["type", "function"],
        "properties": {
            "type": {"const": "function"},
            "function": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": TOOL_NAME.pattern},
                    "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
                    "parameters": {
                        "type": "object",
                        "description": 'a JSON Schema of "type": "object" (omitted: no parameters)',
                    },
                    "strict": {"type": "boolean", "description": "accepted; the agent's provider decides"},
                },
            },
        },
    },
}
TOOL_CHOICE_SCHEMA: dict[str, Any] = {
    "description": "whether and which of `tools` the agent must call (default auto)",
    "oneOf": [
        {"type": "string", "enum": list(CHOICE_MODES)},
        {
            "type": "object",
            "required": ["type", "function"],
            "properties": {
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
            },
        },
    ],
}
