"""A spoken user message (Converse `utterance`): heard, then answered as the text it was heard as.

The audio is transcribed for the agent the user addressed first (else the conversation's first
participant: its transcription settings apply), metered like any transcription (voice.py: the
audio's seconds held first, committed once heard). The transcript is logged as an
UtteranceTranscribed event, then posted as the user's message under the utterance's id, so the
round, the stored message and a retry behave as for a typed message. A retried utterance whose
message was already accepted is not heard again; one that was heard but not yet accepted is heard
again under the same ids, and so billed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.driver import Driver
from services.orchestrator.event_log import EventLog
from services.orchestrator.voice import Voice, VoiceCall, utterance_seconds
from services.runtime.errors import InvalidArgument
from services.runtime.principal import current_caller


def hearing_id(message_id: str) -> str:
    """The id of an utterance's transcription (its hold and its usage event)."""
    return str(uuid.uuid5(uuid.UUID(message_id), "utterance"))


async def hear(
    driver: Driver, voice: Voice, events: EventLog, conversation_id: str, utterance: pb.Utterance
) -> None:
    # What does not depend on another step is asked for at once: whether the message was accepted
    # already, the conversation (which agent hears), and the audio's hold at metering.
    seconds = utterance_seconds(utterance.audio, utterance.format, utterance.sample_rate)
    request_id = hearing_id(utterance.message_id)
    held = asyncio.ensure_future(
        voice.hold(request_id, seconds, "the utterance's voice seconds", conversation_id)
    )
    try:
        seen, conversation = await asyncio.gather(
            driver.seen(conversation_id, utterance.message_id), driver.conversation(conversation_id)
        )
        listener = (*utterance.mention_agent_ids, *conversation.participant_agent_ids)[0]
        agent = await driver.downstream.get_agent(listener)
    except BaseException:
        await _let_go(voice, held, request_id)
        raise
    if seen:
        await _let_go(voice, held, request_id)
        return
    call = VoiceCall(current_caller(), agent, request_id, conversation_id)
    request = pb.TranscribeRequest(
        request_id=request_id,
        agent_id=agent.id,
        audio=utterance.audio,
        format=utterance.format,
        sample_rate=utterance.sample_rate,
        language=utterance.language,
    )
    completion = await voice.hear(call, request, held)
    text = completion.text.strip()
    if not text:
        raise InvalidArgument("audio: no speech was heard in the utterance; nothing was posted")
    heard = pb.UtteranceTranscribed(
        message_id=utterance.message_id, text=text, audio_seconds=completion.usage.audio_seconds
    )
    await events.append(conversation_id, pb.ConversationEvent(utterance_transcribed=heard))
    message = pb.UserMessage(
        message_id=utterance.message_id,
        text=text[:32_000],
        mention_agent_ids=utterance.mention_agent_ids,
        speak_answers=utterance.speak_answers,
    )
    await driver.post(conversation_id, message)


async def _let_go(voice: Voice, held: asyncio.Future[None], request_id: str) -> None:
    """A hold asked for an utterance that will not be heard: released once it was taken."""
    with contextlib.suppress(Exception):
        await held
        await voice.release(request_id, "the utterance was not heard")
