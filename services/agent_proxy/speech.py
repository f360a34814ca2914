"""Synthesize and Transcribe: a voice call queued, guarded and metered as a Generate is.

Each call waits for a slot in the same fair queue as Generate (its tenant's limits too), then walks
its candidates as Generate does (fallback.py): the requested (provider, model), then every other
configured pair of its kind (speech models for Synthesize, transcription models for Transcribe),
each behind its breaker, falling back only before its first output, the caller's deadline bounding
every upstream call. A provider's 400 is the caller's request refused: INVALID_ARGUMENT with the
provider's words. Once output has gone to the caller another attempt would repeat it, so a stream
the provider cuts after that ends the call UNAVAILABLE, without a completion or usage.

Seconds are measured from the audio itself, never taken from anyone's word: speech from the bytes
relayed (its WAV header's rate; OpenAI's 24 kHz for PCM), a transcription from the audio sent.
A WAV stream's output starts with its first sample, not its header: a provider that fails after
only a header has said nothing yet, and the call may still go to the next candidate.

A call whose provider finished publishes its usage event (VOICE_SYNTHESIS, VOICE_TRANSCRIPTION)
under an id derived from the scope's request id; a caller that held quota commits the same event,
which metering counts once. None is published for a call that failed, that the provider cut, or
that its caller cancelled (the caller then commits what it billed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.common.v1 import audio_pb2, usage_pb2

from services.agent_proxy.audio_provider import AudioProviders, AudioTarget, SpeechAsk
from services.agent_proxy.fair_queue import FairQueue
from services.agent_proxy.fallback import Fallback, bounded
from services.agent_proxy.provider import ProviderFailure, Started
from services.agent_proxy.settings import ProxySettings
from services.agent_proxy.transcription import open_transcript, relay_transcript, utterance
from services.agent_proxy.voice_call import CallRecord, check_tenant, cut, refused, usage_event
from services.runtime.principal import Principal
from services.runtime.wav import TruncatedWav, parse_header, pcm_seconds

PublishUsage = Callable[[usage_pb2.UsageEvent], Awaitable[None]]
DEFAULT_VOICE = "alloy"
PCM_RATE = 24_000  # OpenAI's `pcm`: 24 kHz 16-bit mono
# A WAV header longer than this (chunks before the data) is not one a provider would send.
MAX_WAV_HEADER_BYTES = 64 * 1024
AudioUpstream = AsyncGenerator[Started | bytes]


@dataclass
class SpeechOpening:
    """A speech attempt's first output: its first bytes (a WAV's header and first samples)."""

    upstream: AudioUpstream
    first: bytes
    sample_rate: int
    data_offset: int  # where the samples start in the stream (0 for PCM)
    data_bytes: int | None  # what the WAV header says the samples are; None for PCM or a stream
    ended: bool  # the provider already ended (a WAV of no samples)


class Speech:
    def __init__(
        self,
        settings: ProxySettings,
        audio: AudioProviders,
        queue: FairQueue,
        publish_usage: PublishUsage,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._audio = audio
        self._queue = queue
        self._publish_usage = publish_usage
        self._fallback = Fallback(settings.retries, settings.retry_base_seconds, sleep)

    async def synthesize(
        self, request: pb.SynthesizeRequest, principal: Principal, time_remaining: float | None
    ) -> AsyncIterator[pb.SynthesizeResponse]:
        check_tenant(request.scope, principal)
        voice = request.voice
        provider, model = self._audio.resolve("speech", voice.provider, voice.speech_model)
        pcm = voice.format == audio_pb2.AUDIO_FORMAT_PCM
        ask = SpeechAsk(
            text=request.text,
            voice=voice.voice or DEFAULT_VOICE,
            format="pcm" if pcm else "wav",
            speed=voice.speed if voice.HasField("speed") else 1.0,
        )
        record = CallRecord(provider, model)
        deadline = _deadline(time_remaining)
        event = usage_pb2.USAGE_EVENT_TYPE_VOICE_SYNTHESIS
        async with self._settling(request.scope, principal, record, event), self._slot(principal):
            target, opening = await self._fallback.first_output(
                self._audio.candidates("speech", provider, model),
                lambda target: self._open_speech(target, ask, record, deadline),
                deadline,
                refused=refused,
            )
            relayed = 0
            try:
                index = 0
                if opening.first:
                    yield pb.SynthesizeResponse(audio=audio_pb2.AudioChunk(data=opening.first, index=0))
                    relayed, index = len(opening.first), 1
                if not opening.ended:
                    async for piece in opening.upstream:
                        if isinstance(piece, bytes):
                            yield pb.SynthesizeResponse(audio=audio_pb2.AudioChunk(data=piece, index=index))
                            relayed, index = relayed + len(piece), index + 1
            except ProviderFailure as failure:
                target.breaker.record_failure()
                raise cut(target, "audio", f"{relayed} bytes", failure.message) from None
            finally:
                await opening.upstream.aclose()
            samples = relayed - opening.data_offset
            if opening.data_bytes is not None:
                if samples < opening.data_bytes:
                    target.breaker.record_failure()
                    short = f"{relayed} bytes, {opening.data_bytes - samples} short of its WAV header's size"
                    raise cut(target, "audio", short, "the stream ended early")
                samples = opening.data_bytes  # a trailing chunk after the samples is no audio
            usage = record.finish(pcm_seconds(samples, opening.sample_rate), characters=len(request.text))
            completion = audio_pb2.SpeechCompletion(
                format=audio_pb2.AUDIO_FORMAT_PCM if pcm else audio_pb2.AUDIO_FORMAT_WAV,
                sample_rate=opening.sample_rate,
                usage=usage,
                provider_request_id=record.provider_request_id,
            )
            yield pb.SynthesizeResponse(completion=completion)

    async def transcribe(
        self, request: pb.TranscribeRequest, principal: Principal, time_remaining: float | None
    ) -> AsyncIterator[pb.TranscribeResponse]:
        check_tenant(request.scope, principal)
        voice = request.voice
        provider, model = self._audio.resolve("transcription", voice.provider, voice.transcription_model)
        heard = utterance(request)
        record = CallRecord(provider, model)
        deadline = _deadline(time_remaining)
        event = usage_pb2.USAGE_EVENT_TYPE_VOICE_TRANSCRIPTION
        async with self._settling(request.scope, principal, record, event), self._slot(principal):
            target, opening = await self._fallback.first_output(
                self._audio.candidates("transcription", provider, model),
                lambda target: open_transcript(
                    target, heard, request.language, record, self._timeout(deadline)
                ),
                deadline,
                refused=refused,
            )
            async for response in relay_transcript(target, opening, heard, record):
                yield response

    def _slot(self, principal: Principal) -> contextlib.AbstractAsyncContextManager[None]:
        return self._queue.slot(principal.tier, principal.tenant_id)

    def _timeout(self, deadline: float | None) -> float:
        return bounded(self._settings.call_timeout_seconds, deadline)

    async def _open_speech(
        self, target: AudioTarget, ask: SpeechAsk, record: CallRecord, deadline: float | None
    ) -> SpeechOpening:
        """One speech call until its first audio: for a WAV, its header and at least one sample."""
        record.attempt(target)
        upstream = target.provider.speak(target.model, ask, self._timeout(deadline))
        head = b""
        try:
            async for piece in upstream:
                if isinstance(piece, Started):
                    record.provider_request_id = piece.request_id
                    continue
                head += piece
                if ask.format == "pcm":
                    return SpeechOpening(upstream, head, PCM_RATE, 0, None, ended=False)
                opening = _wav_opening(upstream, head, target.name)
                if opening is not None:
                    return opening
            if ask.format == "wav":
                opening = _wav_opening(upstream, head, target.name, ended=True)
                if opening is not None:
                    return opening
            raise ProviderFailure(f"{target.name} ended its answer without audio", retryable=True)
        except BaseException:
            await upstream.aclose()
            raise

    @contextlib.asynccontextmanager
    async def _settling(
        self,
        scope: pb.VoiceCallScope,
        principal: Principal,
        record: CallRecord,
        event_type: usage_pb2.UsageEventType.ValueType,
    ) -> AsyncIterator[None]:
        """However the call ends, its usage is published if and only if the provider finished and
        the caller did not cancel."""
        try:
            yield
        except (asyncio.CancelledError, GeneratorExit):
            record.cancelled = True
            raise
        finally:
            if record.dimensions is not None and not record.cancelled:
                await self._publish_usage(usage_event(scope, principal, event_type, record.dimensions))


def _wav_opening(
    upstream: AudioUpstream, head: bytes, who: str, *, ended: bool = False
) -> SpeechOpening | None:
    """The opening once `head` holds the WAV header and a sample (or the stream ended after the
    header); None to read on. A header a provider should never send is its failure."""
    try:
        header = parse_header(head)
    except TruncatedWav:
        if len(head) > MAX_WAV_HEADER_BYTES or ended:
            raise ProviderFailure(f"{who} sent no whole WAV header", retryable=True) from None
        return None
    except ValueError as exc:
        raise ProviderFailure(f"{who} sent audio MACP cannot relay ({exc})", retryable=True) from None
    if len(head) <= header.data_offset and not ended:
        return None
    return SpeechOpening(upstream, head, header.sample_rate, header.data_offset, header.data_bytes, ended)


def _deadline(time_remaining: float | None) -> float | None:
    return None if time_remaining is None else asyncio.get_running_loop().time() + time_remaining
