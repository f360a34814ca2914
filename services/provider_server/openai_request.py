"""Reading an OpenAI Chat Completions request: its messages (an assistant's `tool_calls`, `role: tool`
messages with their `tool_call_id`), its `tools`, `tool_choice` and `parallel_tool_calls`, checked
the way OpenAI checks them (an assistant message with tool_calls followed by a tool message for
each call, a tool message only in answer to one), each error naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.provider_server.protocol import ProtocolError, content_text, require
from services.provider_server.tool_use import (
    ChoiceMode,
    Dialogue,
    OfferedTool,
    ToolChoice,
    ToolRequest,
    ToolResultSeen,
    offered_tool,
    offered_tools,
)

ROLES = ("system", "developer", "user", "assistant", "tool")
CHOICE_MODES: dict[str, ChoiceMode] = {"auto": "auto", "required": "any", "none": "none"}
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def read_request(body: Mapping[str, Any]) -> ToolRequest:
    tools = offered_tools(body.get("tools"), _tool)
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise ProtocolError(400, "parallel_tool_calls: expected a boolean")
    choice = _choice(body.get("tool_choice"), parallel)
    choice.check(tools, "tool_choice.function.name")
    return ToolRequest(dialogue=_dialogue(body), tools=tools, choice=choice)


def _tool(index: int, tool: Any) -> OfferedTool:
    where = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise ProtocolError(400, f"{where}.type: expected 'function'")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise ProtocolError(400, f"{where}.function: expected an object")
    parameters = function.get("parameters", EMPTY_PARAMETERS)
    return offered_tool(
        function.get("name"), function.get("description"), parameters, f"{where}.function", "parameters"
    )


def _choice(raw: Any, parallel: bool) -> ToolChoice:
    if raw is None:
        return ToolChoice(parallel=parallel)
    if isinstance(raw, str) and raw in CHOICE_MODES:
        return ToolChoice(mode=CHOICE_MODES[raw], parallel=parallel)
    function = raw.get("function") if isinstance(raw, dict) and raw.get("type") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ProtocolError(
            400, "tool_choice: expected 'none', 'auto', 'required' or {type: function, function: {name}}"
        )
    return ToolChoice(mode="tool", name=function["name"], parallel=parallel)


def _dialogue(body: Mapping[str, Any]) -> Dialogue:
    messages = require(body, "messages", list, "a list of messages")
    if not messages:
        raise ProtocolError(400, "messages: at least one message is required")
    prompt: list[str] = []
    names: dict[str, str] = {}  # tool call id -> tool name
    pending: list[str] = []  # the last assistant message's call ids still awaiting a tool message
    trailing: list[ToolResultSeen] = []  # the tool messages at the end of the conversation
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ProtocolError(400, f"{where}.role: expected one of {', '.join(ROLES)}")
        role = message["role"]
        text = content_text(message.get("content") or "", f"{where}.content")
        if role != "tool":
            trailing = []
            if pending:
                raise ProtocolError(
                    400,
                    f"{where}.role: an assistant message with 'tool_calls' must be followed by tool "
                    f"messages responding to each 'tool_call_id'; unanswered: {', '.join(pending)}",
                )
        if role == "assistant":
            calls = _tool_calls(message.get("tool_calls"), where, names)
            pending = list(calls)
            prompt.append("\n".join(filter(None, [text, *calls.values()])))
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in pending:
                raise ProtocolError(
                    400,
                    f"{where}.tool_call_id: a tool message must answer a call of the preceding "
                    f"assistant message's 'tool_calls'; {call_id!r} is none of them",
                )
            pending.remove(call_id)
            trailing.append(ToolResultSeen(name=names[call_id], text=text, is_error=False))
            prompt.append(text)
        else:
            prompt.append(text)
    if pending:
        raise ProtocolError(400, f"messages: tool calls {', '.join(pending)} have no tool message after them")
    last_user_text = prompt[-1] if messages[-1]["role"] == "user" else None
    return Dialogue(prompt=prompt, last_user_text=last_user_text, results=tuple(trailing))


def _tool_calls(raw: Any, where: str, names: dict[str, str]) -> dict[str, str]:
    """The message's calls, id -> how the call reads in the prompt (its name and arguments)."""
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise ProtocolError(400, f"{where}.tool_calls: expected a list of tool calls")
    calls = {}
    for index, call in enumerate(raw):
        at = f"{where}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        call_id = call.get("id") if isinstance(call, dict) else None
        if not isinstance(call_id, str) or not call_id:
            raise ProtocolError(400, f"{at}.id: expected the call's id")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ProtocolError(400, f"{at}.function.name: expected the tool's name")
        if not isinstance(function.get("arguments"), str):
            raise ProtocolError(400, f"{at}.function.arguments: expected the arguments as a JSON string")
        if call_id in names:
            raise ProtocolError(400, f"{at}.id: tool call ids must be unique; {call_id!r} is used twice")
        names[call_id] = function["name"]
        calls[call_id] = f"{function['name']} {function['arguments']}"
    return calls
