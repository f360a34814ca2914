"""What an agent is shown of the conversation: the stored messages, seen from that agent.

Chat APIs know two speakers, the user and the assistant, while a MACP conversation has one user
and several agents. Seen from agent A: A's own messages are the assistant's; the user's and the
other agents' are the user side, the agents' prefixed with their names so A knows who said what.
Consecutive messages of one side are merged (the Anthropic API wants the sides to alternate), the
first one is the user's, and the last one is too: the instruction of this turn (a sub-question, a
pipeline stage's input) or a prompt to go on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb

MAX_TEXT = 32_000
MAX_MESSAGES = 500
CONTINUE = "(It is your turn in the conversation.)"


@dataclass(frozen=True)
class Said:
    """One utterance of the conversation: who said it (an agent id, or None for the user)."""

    agent_id: str | None
    text: str

    @classmethod
    def of(cls, message: conversation_pb.Message) -> Said:
        is_agent = message.role == conversation_pb.MESSAGE_ROLE_AGENT
        return cls(message.author_id if is_agent else None, message.text)


def chat_messages(
    history: Sequence[Said],
    speaker_id: str,
    names: Mapping[str, str],
    instruction: str | None = None,
) -> list[proxy_pb.ChatMessage]:
    """`history` (oldest first) as the speaker's chat messages, ending with `instruction`."""
    said: list[tuple[proxy_pb.ChatRole.ValueType, str]] = []
    for utterance in history:
        if utterance.agent_id == speaker_id:
            said.append((proxy_pb.CHAT_ROLE_ASSISTANT, utterance.text))
        elif utterance.agent_id is None:
            said.append((proxy_pb.CHAT_ROLE_USER, utterance.text))
        else:
            name = names.get(utterance.agent_id, utterance.agent_id)
            said.append((proxy_pb.CHAT_ROLE_USER, f"[{name}]: {utterance.text}"))
    if instruction is not None:
        said.append((proxy_pb.CHAT_ROLE_USER, instruction))
    return alternating(said)


def alternating(said: Iterable[tuple[proxy_pb.ChatRole.ValueType, str]]) -> list[proxy_pb.ChatMessage]:
    """`said` as chat messages the providers take: consecutive texts of one side merged, the first
    and the last on the user's side (a prompt to go on added if needed), the newest kept."""
    turns: list[tuple[proxy_pb.ChatRole.ValueType, list[str]]] = []
    for role, text in said:
        if turns and turns[-1][0] == role:
            turns[-1][1].append(text)
        else:
            turns.append((role, [text]))
    if not turns or turns[-1][0] != proxy_pb.CHAT_ROLE_USER:
        turns.append((proxy_pb.CHAT_ROLE_USER, [CONTINUE]))
    while turns[0][0] != proxy_pb.CHAT_ROLE_USER:
        turns.pop(0)
    messages = [proxy_pb.ChatMessage(role=role, text=_clip("\n\n".join(texts))) for role, texts in turns]
    # Keep the newest; the window must still start on the user's side.
    messages = messages[-MAX_MESSAGES:]
    if messages[0].role != proxy_pb.CHAT_ROLE_USER:
        messages = messages[1:]
    return messages


def _clip(text: str) -> str:
    # The newest part of an over-long merged turn matters most to the next answer.
    return text if len(text) <= MAX_TEXT else text[-MAX_TEXT:]
