"""Usage event ids derived from what they meter, so every producer of one event names it alike.

A turn's AGENT_TURN event is committed by whoever settles it (Metering.Commit, for the quota): the
orchestrator driving the round, or the one that takes the round over when its driver dies; for a
chat completion, the agent proxy also publishes it (over Kafka). All derive its id from the turn
id, and metering keeps one row per event id, so the turn is counted once whichever copy lands
first, and a retried Generate or a second settlement of the same turn does not count twice.
"""

from __future__ import annotations

import uuid
from typing import Final

# Fixed forever: changing it would give already-metered turns new ids.
USAGE_NAMESPACE: Final = uuid.UUID("6d1f2c4e-8a3b-5f7e-9c0d-1b2a3c4d5e6f")


def usage_event_id(kind: str, key: str) -> str:
    """The id of the `kind` usage event of `key` (a turn id, a round's trigger message id)."""
    return str(uuid.uuid5(USAGE_NAMESPACE, f"{kind}:{key}"))


def agent_turn_event_id(turn_id: str) -> str:
    return usage_event_id("agent-turn", turn_id)


def orchestration_event_id(conversation_id: str, trigger_message_id: str) -> str:
    return usage_event_id("orchestration", f"{conversation_id}:{trigger_message_id}")


def tool_call_event_id(call_id: str) -> str:
    """The TOOL_CALL event of one call through the tool gateway (`call_id`: its quota hold's id)."""
    return usage_event_id("tool-call", call_id)


def speech_event_id(request_id: str) -> str:
    """The VOICE_SYNTHESIS event of one Synthesize call (`request_id`: its VoiceCallScope's)."""
    return usage_event_id("voice-synthesis", request_id)


def transcription_event_id(request_id: str) -> str:
    """The VOICE_TRANSCRIPTION event of one Transcribe call (`request_id`: its VoiceCallScope's)."""
    return usage_event_id("voice-transcription", request_id)
