"""Speak and Transcribe: an agent's voice outside any round (the edge's OpenAI-compatible audio API).

Each is metered around its agent proxy call, as a completion is (completions.py): voice seconds are
held at metering before the provider is called, so a tier whose allowance cannot cover them is
refused before any provider is reached; the call runs through the agent proxy with the caller's
token and the agent as its actor; the seconds actually made or heard are committed with the call's
usage event, under the id the agent proxy publishes it with, so metering counts it once. A call
that fails is released: nothing refused or failed is billed. A caller that leaves in the middle of
speech is billed the seconds that reached it.

What is held: for speech, the seconds its text takes a slow speaker (`SPEECH_CHARACTERS_PER_SECOND`
at the call's speed; a real voice is faster, so the hold covers it); for a transcription, the
audio's own length, which is exact.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import grpc
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as proxy_grpc
from macp.common.v1 import audio_pb2, usage_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.downstream import acting
from services.orchestrator.ledger import Ledger
from services.runtime.auth.caller_tokens import acting_agent
from services.runtime.errors import DomainError, domain_error
from services.runtime.principal import Caller
from services.runtime.protos import now_timestamp
from services.runtime.usage_ids import speech_event_id, transcription_event_id
from services.runtime.wav import parse_header, pcm_seconds, read_wav

# A slow speaker's pace: the hold of a speech covers any real voice at the call's speed.
SPEECH_CHARACTERS_PER_SECOND = 12.0
# OpenAI's `pcm` speech: 24 kHz, 16-bit mono.
PCM_SPEECH_RATE = 24_000
_STATUS = {code.value[0]: code for code in grpc.StatusCode}


def audio_seconds(audio: bytes, audio_format: audio_pb2.AudioFormat.ValueType, sample_rate: int) -> float:
    """The seconds of a whole utterance (a WAV file, or PCM at `sample_rate`); ValueError naming
    what is wrong with a WAV that is not one MACP takes."""
    if audio_format == audio_pb2.AUDIO_FORMAT_PCM:
        return pcm_seconds(len(audio), sample_rate)
    header, samples = read_wav(audio)
    return pcm_seconds(len(samples), header.sample_rate)


def relayed_seconds(audio: bytes, audio_format: audio_pb2.AudioFormat.ValueType) -> float:
    """The seconds in the first bytes of a speech stream (PCM at the speech rate, or a WAV whose
    header may promise more than arrived); 0 when not even a WAV header arrived."""
    if audio_format == audio_pb2.AUDIO_FORMAT_PCM:
        return pcm_seconds(len(audio), PCM_SPEECH_RATE)
    try:
        header = parse_header(audio)
    except ValueError:
        return 0.0
    return pcm_seconds(len(audio) - header.data_offset, header.sample_rate)


def voice_of(agent: conversation_pb.Agent, changes: audio_pb2.VoiceSettings) -> audio_pb2.VoiceSettings:
    """The agent's voice settings with each field `changes` sets replacing the agent's."""
    voice = audio_pb2.VoiceSettings()
    voice.CopyFrom(agent.voice)
    for field, value in changes.ListFields():
        setattr(voice, field.name, value)
    return voice


def speech_hold_seconds(text: str, voice: audio_pb2.VoiceSettings) -> int:
    speed = voice.speed if voice.HasField("speed") else 1.0
    return max(1, math.ceil(len(text) / SPEECH_CHARACTERS_PER_SECOND / speed))


@dataclass(frozen=True)
class VoiceCall:
    """One metered voice call: who it is for, the agent, the hold's id (the call's id), and the
    conversation and turn it belongs to, if any."""

    caller: Caller
    agent: conversation_pb.Agent
    request_id: str
    conversation_id: str = ""
    turn_id: str = ""

    def scope(self) -> proxy_pb.VoiceCallScope:
        return proxy_pb.VoiceCallScope(
            request_id=self.request_id,
            tenant_id=self.caller.principal.tenant_id,
            agent_id=self.agent.id,
            conversation_id=self.conversation_id,
            turn_id=self.turn_id,
        )

    def event(
        self, kind: usage_pb2.UsageEventType.ValueType, dimensions: usage_pb2.UsageDimensions
    ) -> usage_pb2.UsageEvent:
        principal = self.caller.principal
        synthesis = kind == usage_pb2.USAGE_EVENT_TYPE_VOICE_SYNTHESIS
        return usage_pb2.UsageEvent(
            event_id=(speech_event_id if synthesis else transcription_event_id)(self.request_id),
            time=now_timestamp(),
            tenant_id=principal.tenant_id,
            user_id=principal.user_id,
            agent_id=self.agent.id,
            conversation_id=self.conversation_id,
            turn_id=self.turn_id,
            type=kind,
            dimensions=dimensions,
            actor_chain=principal.actor_chain,
        )


class Voice:
    """The two calls, on the ledger's holds and the agent proxy's stub."""

    def __init__(self, ledger: Ledger, agent_proxy: proxy_grpc.AgentProxyServiceStub, timeout: float) -> None:
        self._ledger = ledger
        self._agent_proxy = agent_proxy
        self._timeout = timeout
        # Commits running in the background (Voice.hear), kept so they are not collected mid-way.
        self._settling: set[asyncio.Task[pb.ErrorEvent | None]] = set()

    async def hold(
        self, reservation_id: str, seconds: int, what: str, conversation_id: str = "", turn_id: str = ""
    ) -> None:
        """Hold `seconds` of voice under `reservation_id` (a call's id); a refusal raises, naming
        the tier's limit. Asked for on its own so a caller can ask before it knows everything the
        call needs (a spoken answer holds its next sentence while the previous one is spoken)."""
        refusal = await self._ledger.reserve(
            reservation_id,
            metering_pb.METER_VOICE_SECONDS,
            what,
            conversation_id=conversation_id,
            turn_id=turn_id,
            quantity=seconds,
        )
        if refusal is not None:
            raise domain_error(_STATUS.get(refusal.code, grpc.StatusCode.UNAVAILABLE), refusal.detail.message)

    async def release(self, reservation_id: str, reason: str) -> None:
        await self._ledger.release(reservation_id, reason)

    async def _commit(self, call: VoiceCall, event: usage_pb2.UsageEvent, what: str) -> None:
        failure = await self._ledger.commit(call.request_id, event, what)
        if failure is not None:
            raise domain_error(_STATUS.get(failure.code, grpc.StatusCode.UNAVAILABLE), failure.detail.message)

    async def speak(
        self, call: VoiceCall, request: pb.SpeakRequest, held: Awaitable[None] | None = None
    ) -> AsyncIterator[pb.SpeakResponse]:
        """The speech of `request.text`, held first (or by `held`, a hold under the call's id asked
        for earlier), the seconds made committed."""
        voice = voice_of(call.agent, request.voice)
        if held is None:
            held = self.hold(
                call.request_id,
                speech_hold_seconds(request.text, voice),
                "the speech's voice seconds",
                call.conversation_id,
                call.turn_id,
            )
        await held
        proxy_request = proxy_pb.SynthesizeRequest(scope=call.scope(), voice=voice, text=request.text)
        with acting_agent(acting(call.agent)):
            stream = self._agent_proxy.Synthesize(proxy_request, timeout=self._timeout)
        relayed: list[bytes] = []
        started = time.monotonic()
        settled = False
        try:
            async for response in stream:
                if response.HasField("audio"):
                    relayed.append(response.audio.data)
                    yield pb.SpeakResponse(audio=response.audio)
                    continue
                completion = response.completion
                event = call.event(usage_pb2.USAGE_EVENT_TYPE_VOICE_SYNTHESIS, completion.usage)
                settled = True
                await self._commit(call, event, "the speech's voice seconds")
                yield pb.SpeakResponse(completion=completion)
        except grpc.aio.AioRpcError as exc:
            settled = True
            raise await self._failed(call, exc, "the speech failed") from None
        finally:
            stream.cancel()
            if not settled:
                # The caller left mid-speech: what reached it is billed, nothing else.
                await asyncio.shield(self._settle_cut(call, voice, request.text, b"".join(relayed), started))

    async def _settle_cut(
        self, call: VoiceCall, voice: audio_pb2.VoiceSettings, text: str, audio: bytes, started: float
    ) -> None:
        seconds = relayed_seconds(audio, voice.format or audio_pb2.AUDIO_FORMAT_WAV)
        if seconds <= 0:
            await self._ledger.release(call.request_id, "the caller left before any audio")
            return
        dimensions = usage_pb2.UsageDimensions(
            audio_seconds=seconds,
            characters=len(text),
            duration_ms=int((time.monotonic() - started) * 1000),
            provider=voice.provider,
            model=voice.speech_model,
            estimated=True,
        )
        event = call.event(usage_pb2.USAGE_EVENT_TYPE_VOICE_SYNTHESIS, dimensions)
        await self._ledger.commit(call.request_id, event, "the speech's voice seconds")

    async def transcribe(
        self, call: VoiceCall, request: pb.TranscribeRequest
    ) -> AsyncIterator[pb.TranscribeResponse]:
        """The transcript, streamed: the audio's seconds held first, committed before the end is
        answered, released if the transcription failed or its caller left before the end."""
        seconds = utterance_seconds(request.audio, request.format, request.sample_rate)
        await self.hold(call.request_id, seconds, "the transcription's voice seconds", call.conversation_id)
        stream = self._transcription(call, request)
        settled = False
        try:
            async for response in stream:
                if response.HasField("delta"):
                    yield pb.TranscribeResponse(delta=response.delta)
                    continue
                completion = response.completion
                settled = True
                await self._commit(call, self._heard(call, completion), "the transcription's voice seconds")
                yield pb.TranscribeResponse(completion=completion)
        except grpc.aio.AioRpcError as exc:
            settled = True
            raise await self._failed(call, exc, "the transcription failed") from None
        finally:
            stream.cancel()
            if not settled:
                # A transcript is of use only whole: a caller that left before it is not billed.
                await asyncio.shield(self._ledger.release(call.request_id, "the caller left"))

    async def hear(
        self, call: VoiceCall, request: pb.TranscribeRequest, held: Awaitable[None]
    ) -> audio_pb2.TranscriptionCompletion:
        """An utterance's whole transcript, on a hold asked for already (`held`). The hold is
        committed in the background: the round that answers the transcript need not wait for the
        books (the agent proxy publishes the same event, so the seconds are billed either way)."""
        await held
        stream = self._transcription(call, request)
        completion: audio_pb2.TranscriptionCompletion | None = None
        try:
            async for response in stream:
                if response.HasField("completion"):
                    completion = response.completion
        except grpc.aio.AioRpcError as exc:
            raise await self._failed(call, exc, "the transcription failed") from None
        finally:
            stream.cancel()
        if completion is None:
            await self._ledger.release(call.request_id, "the transcription ended without its end")
            raise domain_error(grpc.StatusCode.UNAVAILABLE, "the transcription ended without its end")
        settling = asyncio.create_task(
            self._ledger.commit(
                call.request_id, self._heard(call, completion), "the utterance's voice seconds"
            )
        )
        self._settling.add(settling)
        settling.add_done_callback(self._settling.discard)
        return completion

    def _transcription(
        self, call: VoiceCall, request: pb.TranscribeRequest
    ) -> grpc.aio.UnaryStreamCall[proxy_pb.TranscribeRequest, proxy_pb.TranscribeResponse]:
        proxy_request = proxy_pb.TranscribeRequest(
            scope=call.scope(),
            voice=voice_of(call.agent, request.voice),
            audio=request.audio,
            format=request.format,
            sample_rate=request.sample_rate,
            language=request.language,
        )
        with acting_agent(acting(call.agent)):
            return self._agent_proxy.Transcribe(proxy_request, timeout=self._timeout)

    @staticmethod
    def _heard(call: VoiceCall, completion: audio_pb2.TranscriptionCompletion) -> usage_pb2.UsageEvent:
        return call.event(usage_pb2.USAGE_EVENT_TYPE_VOICE_TRANSCRIPTION, completion.usage)

    async def _failed(self, call: VoiceCall, exc: grpc.aio.AioRpcError, what: str) -> DomainError:
        """A failed call's hold released; the error to raise, in the callee's words."""
        await self._ledger.release(call.request_id, f"{what}: {exc.details()}")
        return domain_error(exc.code(), exc.details() or what)


def utterance_seconds(audio: bytes, audio_format: audio_pb2.AudioFormat.ValueType, sample_rate: int) -> int:
    """The whole seconds an utterance holds (its length rounded up); INVALID_ARGUMENT naming what is
    wrong with audio that is not a WAV MACP takes, or that holds no samples."""
    try:
        seconds = audio_seconds(audio, audio_format, sample_rate)
    except ValueError as exc:
        raise domain_error(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    if seconds <= 0:
        raise domain_error(grpc.StatusCode.INVALID_ARGUMENT, "audio: the utterance is empty (no samples)")
    return max(1, math.ceil(seconds))
