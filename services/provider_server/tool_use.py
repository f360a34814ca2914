"""Tool use as the local provider plays it: which tools the model calls, with which arguments, and
what it says once their results are back. Both wire protocols read their requests into the shapes
here and render the reply in their own.

The deterministic rule, so that a test can predict every reply:

- When tools are offered and the last message is the user's own (not tool results), the model
  calls every offered tool whose name appears in that message's text, as a whole word, in the
  order the names first appear there (several names: parallel calls). No name appears: it answers
  in text as it would without tools.
- A call's arguments follow the tool's input schema: each property written in the user's text as
  `name=value` (`name="two words"` for a value with spaces; an unquoted value ends at whitespace,
  a comma or a semicolon, without a trailing `.`, `?` or `!`) takes that value, a number or an
  integer when the schema says so, `true`/`false` for a boolean; a required property not written
  there takes its schema's `default`, else its first `enum` value, else the empty value of its
  type (`""`, `0`, `false`, `[]`, `{}`, `null`). Optional properties not written are left out.
- The tool choice narrows this: none, no call; "any"/"required", the first offered tool when no
  name appears; a named tool, that tool alone; parallel calls disabled, the first call alone.
- When the last message carries tool results, the model answers in text, one sentence per result
  in order: `<tool name> returned: <result text>` (`<tool name> failed: <result text>` for an error
  result), so a test sees that each result reached the model.
- Call ids are derived from a hash of the prompt (`toolu_…` for Anthropic, `call_…` for OpenAI).
- A call's arguments stream as their JSON text in pieces of four characters, one token each (the
  usage's output tokens); max_tokens does not cut a call. The offered tools' names and descriptions
  count as prompt tokens.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from services.provider_server.answers import Answer, answer_with_text, compose_answer, count_tokens
from services.provider_server.protocol import ProtocolError

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
ARGUMENT_PIECE_CHARACTERS = 4
EMPTY_VALUES: dict[str, Any] = {
    "string": "",
    "number": 0,
    "integer": 0,
    "boolean": False,
    "array": [],
    "object": {},
    "null": None,
}

ChoiceMode = Literal["auto", "any", "tool", "none"]


@dataclass(frozen=True)
class OfferedTool:
    name: str
    description: str
    schema: Mapping[str, Any]


def offered_tool(name: Any, description: Any, schema: Any, where: str, schema_field: str) -> OfferedTool:
    """One offered tool, checked the way both providers check it (fields named in `where`)."""
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise ProtocolError(400, f"{where}.name: expected 1 to 128 letters, digits, '_' or '-'")
    if description is not None and not isinstance(description, str):
        raise ProtocolError(400, f"{where}.description: expected a string")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise ProtocolError(400, f"{where}.{schema_field}.type: expected a JSON Schema of type 'object'")
    properties = schema.get("properties", {})
    if properties is not None and not isinstance(properties, dict):
        raise ProtocolError(400, f"{where}.{schema_field}.properties: expected an object")
    required = schema.get("required") or []
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ProtocolError(400, f"{where}.{schema_field}.required: expected a list of property names")
    return OfferedTool(name=name, description=description or "", schema=schema)


def offered_tools(raw: Any, read: Callable[[int, Any], OfferedTool]) -> tuple[OfferedTool, ...]:
    """A request's `tools`: absent is none; each entry read by `read(index, entry)` (the wire
    shapes differ), their names unique, as both providers require."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ProtocolError(400, "tools: expected a list of tools")
    tools = [read(index, entry) for index, entry in enumerate(raw)]
    names = [tool.name for tool in tools]
    for name in names:
        if names.count(name) > 1:
            raise ProtocolError(400, f"tools: tool names must be unique; {name!r} is offered twice")
    return tuple(tools)


@dataclass(frozen=True)
class ToolChoice:
    mode: ChoiceMode = "auto"
    name: str | None = None  # for mode "tool"
    parallel: bool = True

    def check(self, tools: Sequence[OfferedTool], where: str) -> None:
        if self.mode == "tool" and self.name not in {tool.name for tool in tools}:
            raise ProtocolError(400, f"{where}: tool {self.name!r} is not among the offered tools")


@dataclass(frozen=True)
class ToolResultSeen:
    """A tool result in the request's last message, with the name of the call it answers."""

    name: str
    text: str
    is_error: bool


@dataclass(frozen=True)
class Dialogue:
    """A request as the model reads it: the prompt's texts (system first, then each message), and
    what the last message is: the user's own text, or results of the model's tool calls."""

    prompt: list[str]
    last_user_text: str | None
    results: tuple[ToolResultSeen, ...]


@dataclass(frozen=True)
class ToolRequest:
    """What a request of either protocol asks of the model: the dialogue, the tools it offers and
    how the model may use them."""

    dialogue: Dialogue
    tools: tuple[OfferedTool, ...]
    choice: ToolChoice


@dataclass(frozen=True)
class PlannedCall:
    id: str
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, separators=(",", ":"))

    def pieces(self) -> list[str]:
        """The arguments' JSON text as streamed: four characters a piece, one token each."""
        text, size = self.arguments_json, ARGUMENT_PIECE_CHARACTERS
        return [text[i : i + size] for i in range(0, len(text), size)]


@dataclass(frozen=True)
class ToolCalls:
    """A reply made of tool calls (stop reason tool_use / finish reason tool_calls)."""

    calls: tuple[PlannedCall, ...]
    input_tokens: int

    @property
    def output_tokens(self) -> int:
        return sum(len(call.pieces()) for call in self.calls)


def tool_texts(tools: Sequence[OfferedTool]) -> list[str]:
    """What of the offered tools counts as prompt tokens: names and descriptions."""
    return [f"{tool.name} {tool.description}" for tool in tools]


def plan_calls(
    tools: Sequence[OfferedTool], choice: ToolChoice, text: str, prompt: list[str], id_prefix: str
) -> tuple[PlannedCall, ...]:
    """The calls the model makes in answer to the user's `text` (empty: it answers in text)."""
    if choice.mode == "none":
        return ()
    if choice.mode == "tool":
        chosen = [tool for tool in tools if tool.name == choice.name]
    else:
        positions = {tool.name: _mention(tool.name, text) for tool in tools}
        mentioned = (tool for tool in tools if positions[tool.name] >= 0)
        chosen = sorted(mentioned, key=lambda tool: positions[tool.name])
        if not chosen and choice.mode == "any" and tools:
            chosen = [tools[0]]
    if not choice.parallel:
        chosen = chosen[:1]
    digest = hashlib.sha256("\x00".join(prompt).encode()).hexdigest()
    return tuple(
        PlannedCall(
            id=f"{id_prefix}{hashlib.sha256(f'{digest}:{index}'.encode()).hexdigest()[:24]}",
            name=tool.name,
            arguments=arguments_for(tool.schema, text),
        )
        for index, tool in enumerate(chosen)
    )


def results_text(results: Sequence[ToolResultSeen]) -> str:
    """The model's text answer to its tool calls' results: one sentence per result."""
    return "\n".join(
        f"{result.name} {'failed' if result.is_error else 'returned'}: {result.text}" for result in results
    )


def _mention(name: str, text: str) -> int:
    found = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)
    return found.start() if found else -1


def arguments_for(schema: Mapping[str, Any], text: str) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    required = schema.get("required") or []
    arguments: dict[str, Any] = {}
    for name in [*properties, *(r for r in required if r not in properties)]:
        property_schema = properties.get(name)
        property_schema = property_schema if isinstance(property_schema, dict) else {}
        written = _written_value(name, text)
        if written is not None:
            arguments[name] = _typed(written, _type_of(property_schema))
        elif name in required:
            arguments[name] = _default(property_schema)
    return arguments


def _written_value(name: str, text: str) -> str | None:
    found = re.search(rf"(?<![\w-]){re.escape(name)}=(?:\"([^\"]*)\"|'([^']*)'|([^\s,;]+))", text)
    if found is None:
        return None
    quoted = found.group(1) if found.group(1) is not None else found.group(2)
    return quoted if quoted is not None else found.group(3).rstrip(".?!")


def _type_of(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return kind if isinstance(kind, str) else None


def _typed(value: str, kind: str | None) -> Any:
    """The written value as the schema's type, or the text as written when it is not one."""
    if kind in ("integer", "number"):
        if re.fullmatch(r"[-+]?\d+", value):
            return int(value)
        return float(value) if kind == "number" and NUMBER.fullmatch(value) else value
    if kind == "boolean" and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if kind in ("array", "object"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _default(schema: Mapping[str, Any]) -> Any:
    if "default" in schema:
        return schema["default"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    return EMPTY_VALUES.get(_type_of(schema) or "string", "")


def reply_to(
    dialogue: Dialogue,
    tools: Sequence[OfferedTool],
    choice: ToolChoice,
    max_tokens: int | None,
    exact_tokens: int | None,
    id_prefix: str,
) -> Answer | ToolCalls:
    """The model's reply: text for tool results, the calls the rule asks for, else its usual text."""
    input_tokens = count_tokens([*dialogue.prompt, *tool_texts(tools)])
    if dialogue.results:
        return answer_with_text(results_text(dialogue.results), input_tokens, max_tokens)
    if tools and dialogue.last_user_text is not None:
        calls = plan_calls(tools, choice, dialogue.last_user_text, dialogue.prompt, id_prefix)
        if calls:
            return ToolCalls(calls=calls, input_tokens=input_tokens)
    return replace(compose_answer(dialogue.prompt, max_tokens, exact_tokens), input_tokens=input_tokens)
