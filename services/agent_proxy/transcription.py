"""Transcribe's own part: the audio sent checked and measured, one attempt to its first words, and
the transcript relayed (speech.py queues, walks and meters the call).

Providers take files, so PCM is wrapped in a WAV header, and a WAV is sent again with a header of
its own (a streamed size or extra chunks are the caller's, not every provider's). Its seconds are
the audio's own, counted before any provider hears it. The transcript's deltas are relayed as they
come; the completion's text is their join, as the contract says: a provider that sends only its
end event has its whole text sent as the one delta first.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.common.v1 import audio_pb2

from services.agent_proxy.audio_provider import AudioTarget, Transcribed
from services.agent_proxy.provider import ProviderFailure, Started
from services.agent_proxy.voice_call import CallRecord, cut
from services.runtime.errors import InvalidArgument
from services.runtime.wav import SAMPLE_WIDTH, check_sample_rate, pcm_seconds, read_wav, wav_header

TranscriptUpstream = AsyncGenerator[Started | str | Transcribed]


@dataclass(frozen=True)
class Utterance:
    """The audio to transcribe, as a provider takes it, and how long it is."""

    wav: bytes
    seconds: float


@dataclass
class TranscriptOpening:
    upstream: TranscriptUpstream
    first: str | Transcribed


def utterance(request: pb.TranscribeRequest) -> Utterance:
    """The request's audio as a WAV of 16-bit mono PCM; what is wrong with it, named."""
    try:
        if request.format == audio_pb2.AUDIO_FORMAT_PCM:
            if not request.sample_rate:
                raise InvalidArgument("sample_rate: required for PCM audio")
            pcm, rate = request.audio, request.sample_rate
            if len(pcm) % SAMPLE_WIDTH:
                raise InvalidArgument(f"audio: {len(pcm)} bytes is not a whole number of 16-bit samples")
            check_sample_rate(rate)
        else:
            if request.sample_rate:
                raise InvalidArgument("sample_rate: only for PCM audio (a WAV says its own)")
            header, pcm = read_wav(request.audio)
            rate = header.sample_rate
    except ValueError as exc:  # wav's messages name `audio` already
        raise InvalidArgument(str(exc)) from None
    return Utterance(wav_header(len(pcm), rate) + pcm, pcm_seconds(len(pcm), rate))


async def open_transcript(
    target: AudioTarget, heard: Utterance, language: str, record: CallRecord, read_timeout: float
) -> TranscriptOpening:
    """One transcription call until its first words (or its end, for audio without any)."""
    record.attempt(target)
    upstream = target.provider.transcribe(target.model, heard.wav, language, read_timeout)
    try:
        async for event in upstream:
            if isinstance(event, Started):
                record.provider_request_id = event.request_id
                continue
            return TranscriptOpening(upstream, event)
        raise ProviderFailure(f"{target.name} ended its answer without a transcript", retryable=True)
    except BaseException:
        await upstream.aclose()
        raise


async def relay_transcript(
    target: AudioTarget, opening: TranscriptOpening, heard: Utterance, record: CallRecord
) -> AsyncIterator[pb.TranscribeResponse]:
    texts: list[str] = []
    end: Transcribed | None = None
    event: Started | str | Transcribed = opening.first
    try:
        while not isinstance(event, Transcribed):
            if isinstance(event, str):
                yield pb.TranscribeResponse(delta=audio_pb2.TranscriptDelta(text=event, index=len(texts)))
                texts.append(event)
            try:
                event = await anext(opening.upstream)
            except StopAsyncIteration:
                break
        else:
            end = event
    except ProviderFailure as failure:
        target.breaker.record_failure()
        raise cut(target, "transcript", f"{len(texts)} deltas", failure.message) from None
    finally:
        await opening.upstream.aclose()
    if end is None:  # the adapter raises first; kept so no completion ever goes without an end
        target.breaker.record_failure()
        raise cut(target, "transcript", f"{len(texts)} deltas", "no end event")
    if not texts and end.text:
        yield pb.TranscribeResponse(delta=audio_pb2.TranscriptDelta(text=end.text, index=0))
        texts.append(end.text)
    usage = record.finish(heard.seconds)
    completion = audio_pb2.TranscriptionCompletion(
        text="".join(texts), usage=usage, provider_request_id=record.provider_request_id
    )
    yield pb.TranscribeResponse(completion=completion)
