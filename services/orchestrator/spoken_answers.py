"""Spoken answers: an agent's answer spoken sentence by sentence while it is written.

A round speaks when its message asked (`speak_answers`) or its conversation does. Each turn then
gets a `Speaker` between the turn and the log: every event passes through it unchanged, and the
turn's text deltas are also cut into sentences, each spoken as soon as it ends (Voice.speak: voice
seconds held before the provider is called, the seconds made committed), its audio logged as
SpeechAudio events beside the deltas. Sentences are spoken one after another, in order, by one task
per turn, so a listener hears them in the order they were written while the next ones are
generated.

Each sentence's voice seconds are held before it is spoken, but not on the way to its audio: the
first sentence's hold is asked for when the turn starts (sized for a first sentence, before its
text is known), and each later one's as soon as the sentence has ended, while the one before it is
spoken. A hold left unused when the turn ends is released.

The turn's end waits for its speech: the Speaker holds the turn's TurnCompleted until every
sentence is spoken and SpeechCompleted is logged, so a client that stops at TurnCompleted has
heard the whole answer. A turn that did not complete (cancelled, interrupted, failed) stops
speaking at once. A voice refusal (the tier's voice minutes are spent) ends the turn's speech with
an error event; the text goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Awaitable, Callable

import grpc
from macp.common.v1 import audio_pb2
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.event_shapes import error_event
from services.orchestrator.voice import Voice, VoiceCall, speech_hold_seconds, voice_of
from services.runtime.errors import DomainError

Emit = Callable[[pb.ConversationEvent], Awaitable[None]]

# A sentence ends at . ! ? or an ellipsis (and closing quotes or brackets after them) followed by
# white space, or at a line break.
_SENTENCE_END = re.compile(r"""(?:[.!?\u2026]+["')\]\u201d\u2019]*\s+|\n+)""")
# A run of text with no sentence end is spoken in pieces of about this many characters, cut at a
# space: a listener should not wait for a paragraph without full stops.
LONGEST_SENTENCE = 400
# The most one Synthesize takes (SpeakRequest.text).
MAX_SPEECH_CHARACTERS = 4096
SPOKEN_OUTCOMES = frozenset({pb.TURN_OUTCOME_COMPLETED, pb.TURN_OUTCOME_TRUNCATED})
# What the first sentence's hold, asked for before its text exists, covers: five seconds, a first
# sentence of sixty characters at a slow speaker's pace. It is committed by what was made, longer
# or shorter.
FIRST_SENTENCE_HOLD_SECONDS = 5


def sentence_id(turn_id: str, sentence: int) -> str:
    """The id of one sentence's Synthesize (its hold and its usage event): the same on a retry."""
    return str(uuid.uuid5(uuid.UUID(turn_id), f"speech:{sentence}"))


class SentenceCutter:
    """Text in, whole sentences out, in order; `rest` is what has not ended yet."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> list[str]:
        self._pending += text
        sentences: list[str] = []
        while True:
            found = _SENTENCE_END.search(self._pending)
            if found is not None:
                sentence, self._pending = self._pending[: found.end()], self._pending[found.end() :]
            elif len(self._pending) > LONGEST_SENTENCE:
                cut = self._pending.rfind(" ", 0, LONGEST_SENTENCE)
                cut = cut + 1 if cut > 0 else LONGEST_SENTENCE
                sentence, self._pending = self._pending[:cut], self._pending[cut:]
            else:
                return sentences
            if _speakable(sentence):
                sentences.append(sentence.strip())

    def rest(self) -> str:
        rest, self._pending = self._pending.strip(), ""
        return rest if _speakable(rest) else ""


def _speakable(text: str) -> bool:
    """Whether there is anything to say: punctuation or white space alone is not spoken."""
    return any(character.isalnum() for character in text)


class Speaker:
    """Speaks one turn's answer (see the module docstring); `emit` is what the turn writes with."""

    def __init__(self, voice: Voice, call: VoiceCall, emit: Emit) -> None:
        self._voice = voice
        self._call = call
        self._emit = emit
        self._cutter = SentenceCutter()
        self._voice_settings = voice_of(call.agent, audio_pb2.VoiceSettings())
        self._sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self._spoken = 0
        self._seconds = 0.0
        self._worker: asyncio.Task[None] | None = None
        self._stopped = False
        # Each sentence's hold, by its index, asked for ahead of its speech (see the docstring).
        self._queued = 0
        self._holds: dict[int, asyncio.Future[None]] = {0: self._hold(0, FIRST_SENTENCE_HOLD_SECONDS)}

    async def emit(self, event: pb.ConversationEvent) -> None:
        turn_id = self._call.turn_id
        if event.HasField("turn_completed") and event.turn_completed.turn_id == turn_id:
            await self._finish(event.turn_completed.outcome)
            await self._emit(event)
            return
        await self._emit(event)
        if event.HasField("token_delta") and event.token_delta.turn_id == turn_id:
            for sentence in self._cutter.feed(event.token_delta.text):
                self._say(sentence)

    def _say(self, sentence: str) -> None:
        if self._stopped:
            return
        if self._worker is None:
            self._worker = asyncio.create_task(self._speak_all())
        for start in range(0, len(sentence), MAX_SPEECH_CHARACTERS):
            piece = sentence[start : start + MAX_SPEECH_CHARACTERS]
            if self._queued not in self._holds:
                self._holds[self._queued] = self._hold(
                    self._queued, speech_hold_seconds(piece, self._voice_settings)
                )
            self._queued += 1
            self._sentences.put_nowait(piece)

    def _hold(self, index: int, seconds: int) -> asyncio.Future[None]:
        call = self._call
        what = f"sentence {index}'s voice seconds"
        return asyncio.ensure_future(
            self._voice.hold(
                sentence_id(call.turn_id, index), seconds, what, call.conversation_id, call.turn_id
            )
        )

    async def _release_unspoken(self) -> None:
        """Holds asked for sentences that were never spoken (the turn stopped, or said less than
        its first hold was for): released once taken; one that was refused holds nothing."""
        for index, hold in self._holds.items():
            if index < self._spoken:
                continue
            with contextlib.suppress(Exception):  # a refused hold holds nothing
                await hold
                await self._voice.release(
                    sentence_id(self._call.turn_id, index), "the sentence was not spoken"
                )

    async def _finish(self, outcome: pb.TurnOutcome.ValueType) -> None:
        """Speak what is left and wait for it, or stop at once for a turn that did not complete."""
        if outcome in SPOKEN_OUTCOMES:
            rest = self._cutter.rest()
            if rest:
                self._say(rest)
        else:
            self._stopped = True
        if self._worker is None:
            await self._release_unspoken()
            return
        if self._stopped:
            self._worker.cancel()
        self._sentences.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        await self._release_unspoken()
        await self._emit(
            pb.ConversationEvent(
                speech_completed=pb.SpeechCompleted(
                    turn_id=self._call.turn_id,
                    agent_id=self._call.agent.id,
                    sentences=self._spoken,
                    audio_seconds=self._seconds,
                )
            )
        )

    async def _speak_all(self) -> None:
        while (sentence := await self._sentences.get()) is not None:
            if self._stopped:
                continue
            try:
                await self._speak(sentence)
            except (DomainError, grpc.aio.AioRpcError) as exc:
                # Out of voice minutes, or the provider failed: the rest of the answer is text only.
                self._stopped = True
                await self._emit(pb.ConversationEvent(error=self._failure(exc)))

    async def _speak(self, sentence: str) -> None:
        index = self._spoken
        call = VoiceCall(
            self._call.caller,
            self._call.agent,
            sentence_id(self._call.turn_id, index),
            self._call.conversation_id,
            self._call.turn_id,
        )
        request = pb.SpeakRequest(request_id=call.request_id, agent_id=call.agent.id, text=sentence)
        audio_format = self._voice_settings.format or audio_pb2.AUDIO_FORMAT_WAV
        async for response in self._voice.speak(call, request, self._holds[index]):
            if response.HasField("audio"):
                audio = pb.SpeechAudio(
                    turn_id=call.turn_id,
                    agent_id=call.agent.id,
                    sentence=index,
                    chunk=response.audio,
                    format=audio_format,
                )
                await self._emit(pb.ConversationEvent(speech_audio=audio))
            else:
                self._seconds += response.completion.usage.audio_seconds
        self._spoken += 1

    def _failure(self, exc: DomainError | grpc.aio.AioRpcError) -> pb.ErrorEvent:
        if isinstance(exc, DomainError):
            code, message = exc.code, exc.message
        else:
            code, message = exc.code(), exc.details() or exc.code().name
        reason = "VOICE_QUOTA_EXCEEDED" if code == grpc.StatusCode.RESOURCE_EXHAUSTED else "SPEECH_FAILED"
        return error_event(
            code, reason, f"the answer is no longer spoken: {message}; its text goes on", self._call.turn_id
        )
