"""Reading an Anthropic Messages request: its system prompt and messages (text, `tool_use` and
`tool_result` blocks), its `tools` and `tool_choice`, checked the way Anthropic checks them (each
tool_use answered by a tool_result in the very next message, tools defined whenever tool blocks
appear), each error naming the field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from services.provider_server.protocol import ProtocolError, content_text, require
from services.provider_server.tool_use import (
    Dialogue,
    OfferedTool,
    ToolChoice,
    ToolRequest,
    ToolResultSeen,
    offered_tool,
    offered_tools,
)

CHOICE_MODES = ("auto", "any", "tool", "none")


def read_request(body: Mapping[str, Any]) -> ToolRequest:
    tools = offered_tools(body.get("tools"), _tool)
    choice = _choice(body.get("tool_choice"))
    choice.check(tools, "tool_choice.name")
    return ToolRequest(dialogue=_dialogue(body, bool(tools)), tools=tools, choice=choice)


def _tool(index: int, tool: Any) -> OfferedTool:
    where = f"tools.{index}"
    if not isinstance(tool, dict):
        raise ProtocolError(400, f"{where}: expected an object")
    if tool.get("type", "custom") != "custom":
        raise ProtocolError(400, f"{where}.type: only custom tools are served here")
    return offered_tool(
        tool.get("name"), tool.get("description"), tool.get("input_schema"), where, "input_schema"
    )


def _choice(raw: Any) -> ToolChoice:
    if raw is None:
        return ToolChoice()
    if not isinstance(raw, dict) or raw.get("type") not in CHOICE_MODES:
        raise ProtocolError(400, f"tool_choice.type: expected one of {', '.join(CHOICE_MODES)}")
    name = raw.get("name")
    if raw["type"] == "tool" and not isinstance(name, str):
        raise ProtocolError(400, "tool_choice.name: Field required for type 'tool'")
    disabled = raw.get("disable_parallel_tool_use", False)
    if not isinstance(disabled, bool):
        raise ProtocolError(400, "tool_choice.disable_parallel_tool_use: expected a boolean")
    return ToolChoice(mode=raw["type"], name=name, parallel=not disabled)


def _dialogue(body: Mapping[str, Any], tools_defined: bool) -> Dialogue:
    system = body.get("system")
    prompt = [content_text(system, "system")] if system is not None else []
    messages = require(body, "messages", list, "a list of messages")
    if not messages:
        raise ProtocolError(400, "messages: at least one message is required")
    names: dict[str, str] = {}  # tool_use id -> tool name
    pending: list[str] = []  # the previous assistant message's tool_use ids, awaiting results
    results: list[ToolResultSeen] = []
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise ProtocolError(400, f"{where}.role: expected 'user' or 'assistant'")
        blocks = _blocks(message.get("content"), f"{where}.content")
        texts: list[str] = []
        uses: list[str] = []
        results = []
        for number, block in enumerate(blocks):
            at = f"{where}.content.{number}"
            kind = block.get("type")
            if kind in ("tool_use", "tool_result") and not tools_defined:
                raise ProtocolError(
                    400, f"{at}: requests with tool_use or tool_result blocks must define tools"
                )
            if kind == "text":
                texts.append(block["text"])
            elif kind == "tool_use":
                uses.append(_tool_use(block, message["role"], at, names))
                texts.append(f"{block['name']} {json.dumps(block['input'], separators=(',', ':'))}")
            elif kind == "tool_result":
                result = _tool_result(block, message["role"], at, pending, names)
                results.append(result)
                texts.append(result.text)
        answered = set(_answered(blocks))
        unanswered = [use for use in pending if use not in answered]
        if unanswered:
            raise ProtocolError(
                400,
                f"{where}: tool_use ids were found without tool_result blocks immediately after: "
                f"{', '.join(unanswered)}",
            )
        pending = uses
        prompt.append("\n".join(texts))
    if pending:
        raise ProtocolError(
            400, f"messages: tool_use ids {', '.join(pending)} have no tool_result after them"
        )
    last = messages[-1]
    last_user_text = prompt[-1] if last["role"] == "user" and not results else None
    return Dialogue(prompt=prompt, last_user_text=last_user_text, results=tuple(results))


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ProtocolError(400, f"{where}: expected a string or a list of content blocks")
    for number, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise ProtocolError(400, f"{where}.{number}: expected a content block with a type")
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            raise ProtocolError(400, f"{where}.{number}.text: expected a string")
    return content


def _answered(blocks: list[dict[str, Any]]) -> list[str]:
    return [str(block.get("tool_use_id")) for block in blocks if block.get("type") == "tool_result"]


def _tool_use(block: dict[str, Any], role: str, where: str, names: dict[str, str]) -> str:
    if role != "assistant":
        raise ProtocolError(400, f"{where}: tool_use blocks belong to assistant messages")
    use_id, name = block.get("id"), block.get("name")
    if not isinstance(use_id, str) or not use_id:
        raise ProtocolError(400, f"{where}.id: expected the tool_use id")
    if not isinstance(name, str) or not name:
        raise ProtocolError(400, f"{where}.name: expected the tool's name")
    if not isinstance(block.get("input"), dict):
        raise ProtocolError(400, f"{where}.input: expected an object")
    if use_id in names:
        raise ProtocolError(400, f"{where}.id: tool_use ids must be unique; {use_id!r} is used twice")
    names[use_id] = name
    return use_id


def _tool_result(
    block: dict[str, Any], role: str, where: str, pending: list[str], names: dict[str, str]
) -> ToolResultSeen:
    if role != "user":
        raise ProtocolError(400, f"{where}: tool_result blocks belong to user messages")
    use_id = block.get("tool_use_id")
    if use_id not in pending:
        raise ProtocolError(
            400,
            f"{where}.tool_use_id: unexpected tool_use_id {use_id!r}; each tool_result block must "
            "answer a tool_use block of the previous message",
        )
    is_error = block.get("is_error", False)
    if not isinstance(is_error, bool):
        raise ProtocolError(400, f"{where}.is_error: expected a boolean")
    text = content_text(block.get("content") or "", f"{where}.content")
    return ToolResultSeen(name=names[use_id], text=text, is_error=is_error)
