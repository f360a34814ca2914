"""What the agent is shown of a chat completion's messages: the caller's exchange as chat messages.

A conversation's transcript (transcript.py) merges every run of one side into one message, so the
sides alternate as the Anthropic API wants. A completion's exchange may hold the agent's calls of
the caller's tools and their results, and each call must stay right before its results, in order:
merging across them would tear a call from its result (both providers refuse that). So only plain
texts of one side are merged here; an assistant message with tool calls takes the text said just
before it, and each result stays its own CHAT_ROLE_TOOL message after its call (the agent proxy puts
results and the user's next text into one user message, as both protocols have it).

The pairing is checked first, the way OpenAI checks it: the calls of an assistant message are each
answered by one tool message before any other message, and a tool message answers a call of the
assistant message before it. A request that breaks it is refused naming the message.
"""

from __future__ import annotations

from collections.abc import Sequence

from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.transcript import CONTINUE, MAX_MESSAGES, MAX_TEXT
from services.runtime.errors import InvalidArgument

# What the model is shown of a tool's empty result (a provider may refuse an empty one).
EMPTY_RESULT = "(empty result)"


def completion_prompt(
    agent: conversation_pb.Agent, messages: Sequence[pb.CompletionMessage]
) -> tuple[str, list[proxy_pb.ChatMessage]]:
    """The system prompt (the agent's, then the caller's system messages) and the chat messages,
    starting on the user's side and ending on it (the user's text, or tool results)."""
    check_pairing(messages)
    system = [agent.system_prompt] if agent.system_prompt else []
    chat: list[proxy_pb.ChatMessage] = []
    for message in messages:
        if message.role == pb.COMPLETION_ROLE_SYSTEM:
            system.append(message.text)
        elif message.role == pb.COMPLETION_ROLE_TOOL:
            chat.append(
                proxy_pb.ChatMessage(
                    role=proxy_pb.CHAT_ROLE_TOOL,
                    text=message.text or EMPTY_RESULT,
                    tool_result=proxy_pb.ToolResult(tool_call_id=message.tool_call_id),
                )
            )
        elif message.role == pb.COMPLETION_ROLE_ASSISTANT:
            _say(chat, proxy_pb.CHAT_ROLE_ASSISTANT, message.text, message.tool_calls)
        else:
            _say(chat, proxy_pb.CHAT_ROLE_USER, message.text, ())
    if not chat or chat[-1].role == proxy_pb.CHAT_ROLE_ASSISTANT:
        chat.append(proxy_pb.ChatMessage(role=proxy_pb.CHAT_ROLE_USER, text=CONTINUE))
    return "\n\n".join(system)[:MAX_TEXT], _from_the_user(chat[-MAX_MESSAGES:])


def check_pairing(messages: Sequence[pb.CompletionMessage]) -> None:
    """Refuse (INVALID_ARGUMENT, naming the message) calls without results and results without calls."""
    waiting: dict[str, int] = {}  # call id -> the index of the assistant message that made it
    for index, message in enumerate(messages):
        if message.role == pb.COMPLETION_ROLE_TOOL:
            if waiting.pop(message.tool_call_id, None) is None:
                raise InvalidArgument(
                    f"messages[{index}].tool_call_id: {message.tool_call_id!r} answers no tool call "
                    "of the assistant message before it (or one already answered)"
                )
            continue
        _refuse_unanswered(waiting, f"messages[{index}]")
        for position, call in enumerate(message.tool_calls):
            if call.id in waiting:
                raise InvalidArgument(
                    f"messages[{index}].tool_calls[{position}].id: {call.id!r} is used twice"
                )
            waiting[call.id] = index
    _refuse_unanswered(waiting, "messages")


def _refuse_unanswered(waiting: dict[str, int], where: str) -> None:
    if waiting:
        ids = ", ".join(repr(call_id) for call_id in waiting)
        asked = next(iter(waiting.values()))
        raise InvalidArgument(
            f"{where}: the tool calls of messages[{asked}] need a tool message with each result "
            f"first; none answers {ids}"
        )


def _say(
    chat: list[proxy_pb.ChatMessage],
    role: proxy_pb.ChatRole.ValueType,
    text: str,
    tool_calls: Sequence[proxy_pb.ToolCall],
) -> None:
    """Append one side's message, merged into the one before when that is a plain text of the same
    side (a message with tool calls must stay right before their results)."""
    last = chat[-1] if chat else None
    if last is None or last.role != role or last.tool_calls:
        chat.append(proxy_pb.ChatMessage(role=role, text=_clip(text), tool_calls=tool_calls))
        return
    last.text = _clip("\n\n".join(part for part in (last.text, text) if part))
    last.tool_calls.extend(tool_calls)


def _from_the_user(chat: list[proxy_pb.ChatMessage]) -> list[proxy_pb.ChatMessage]:
    """`chat` from its first user text on: a window that starts with the agent's words, or with
    results whose calls fell out of it, is not one a provider takes. With no user text at all (the
    agent's calls and their results alone), a prompt to go on opens it instead."""
    users = (index for index, message in enumerate(chat) if message.role == proxy_pb.CHAT_ROLE_USER)
    first = next(users, None)
    if first is None:
        return [proxy_pb.ChatMessage(role=proxy_pb.CHAT_ROLE_USER, text=CONTINUE), *chat]
    return chat[first:]


def _clip(text: str) -> str:
    # The newest part of an over-long merged message matters most to the answer.
    return text if len(text) <= MAX_TEXT else text[-MAX_TEXT:]
