"""Synthesize and Transcribe through a real agent proxy against the local provider server's audio
API: real audio (services/provider_server/audio_codec.py, whose tones decode back to their text),
seconds measured from it, fallback behind the breakers, and the usage events on the real topic."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

import grpc
import pytest
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.common.v1 import audio_pb2, usage_pb2

from services.agent_proxy.audio_provider import AudioProviders
from services.agent_proxy.provider import ProviderEvent, Turn
from services.agent_proxy.providers import Providers
from services.agent_proxy.settings import ProviderConfig, ProxySettings
from services.provider_server import audio_codec
from services.provider_server.server import RunningProviderServer
from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.runtime.settings import Env
from services.runtime.usage_ids import speech_event_id, transcription_event_id
from services.runtime.wav import pcm_seconds, read_wav
from tests.agent_proxy.conftest import Proxy, book, provider_environ, running_proxy
from tests.agent_proxy.usage_topic import UsageRecord, read_usage
from tests.tokens import TokenWorld

pytestmark = pytest.mark.integration

TEXT = "Hello from MACP, spoken and heard."


class ChatOnly:
    """A chat provider that is never called: the audio registry needs only the breakers."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    def stream(self, model: str, turn: Turn, read_timeout: float) -> AsyncGenerator[ProviderEvent]:
        raise AssertionError("no chat here")

    async def close(self) -> None:
        pass


@pytest.fixture
async def proxy(
    service_environ: dict[str, str], tokens: TokenWorld, provider_server: RunningProviderServer
) -> AsyncIterator[Proxy]:
    """The proxy of conftest, the local provider offering two speech models, breakers that open
    after two failures."""
    environ = {
        **service_environ,
        **provider_environ(provider_server.base_url),
        "MACP_PROVIDER_LOCAL_SPEECH_MODELS": "speech-1,speech-2",
        "MACP_AGENT_PROXY_BREAKER_FAILURES": "2",
    }
    async with running_proxy(environ, tokens) as running:
        yield running


def scope(tenant_id: str) -> pb.VoiceCallScope:
    return pb.VoiceCallScope(
        request_id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        agent_id=str(uuid.uuid4()),
        conversation_id=str(uuid.uuid4()),
        turn_id=str(uuid.uuid4()),
    )


async def synthesize(proxy: Proxy, request: pb.SynthesizeRequest) -> list[pb.SynthesizeResponse]:
    return [r async for r in proxy.stub.Synthesize(request, metadata=proxy.auth, timeout=20)]


async def transcribe(proxy: Proxy, request: pb.TranscribeRequest) -> list[pb.TranscribeResponse]:
    return [r async for r in proxy.stub.Transcribe(request, metadata=proxy.auth, timeout=20)]


def audio_of(responses: list[pb.SynthesizeResponse]) -> bytes:
    chunks = [r.audio for r in responses if r.HasField("audio")]
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    return b"".join(chunk.data for chunk in chunks)


async def usage(proxy: Proxy, until: int) -> list[UsageRecord]:
    return await read_usage(
        proxy.environ["MACP_KAFKA_BOOTSTRAP"],
        proxy.environ["MACP_KAFKA_USAGE_TOPIC"],
        until=until,
        tenant_id=proxy.tenant.tenant_id,
    )


async def test_speech_streams_in_chunks_that_decode_to_the_text_and_is_metered_once(proxy: Proxy) -> None:
    request = pb.SynthesizeRequest(scope=scope(proxy.tenant.tenant_id), text=TEXT)
    responses = await synthesize(proxy, request)
    *chunks, last = responses
    assert len(chunks) > 1
    assert len(chunks[0].audio.data) < len(audio_of(responses)) / 4  # not the whole answer at once
    header, pcm = read_wav(audio_of(responses))
    assert audio_codec.transcribe(pcm, header.sample_rate) == TEXT
    completion = last.completion
    assert (completion.format, completion.sample_rate) == (audio_pb2.AUDIO_FORMAT_WAV, 24_000)
    assert completion.usage.audio_seconds == pcm_seconds(len(pcm), 24_000) > 2.0
    assert completion.usage.characters == len(TEXT)
    assert (completion.usage.provider, completion.usage.model) == ("local", "speech-1")
    assert completion.provider_request_id.startswith("req_")
    [record] = await usage(proxy, until=1)
    event = record.event
    assert event.event_id == speech_event_id(request.scope.request_id)
    assert event.type == usage_pb2.USAGE_EVENT_TYPE_VOICE_SYNTHESIS
    assert (event.agent_id, event.conversation_id, event.turn_id) == (
        request.scope.agent_id,
        request.scope.conversation_id,
        request.scope.turn_id,
    )
    assert event.user_id  # the token's subject
    assert event.dimensions == completion.usage


async def test_audio_reaches_the_caller_as_the_provider_makes_it(
    proxy: Proxy, provider_server: RunningProviderServer
) -> None:
    await book(provider_server, "speech-1", "pace=0.2", times=1)  # 0.2 s between 100 ms chunks
    request = pb.SynthesizeRequest(scope=scope(proxy.tenant.tenant_id), text="abcd")  # 3 chunks
    loop = asyncio.get_running_loop()
    arrivals = [loop.time() async for _ in proxy.stub.Synthesize(request, metadata=proxy.auth, timeout=20)]
    assert arrivals[-1] - arrivals[0] >= 0.35


async def test_pcm_speech_is_the_bare_samples_at_24_khz(proxy: Proxy) -> None:
    voice = audio_pb2.VoiceSettings(format=audio_pb2.AUDIO_FORMAT_PCM, voice="verse", speed=2.0)
    request = pb.SynthesizeRequest(
        scope=scope(proxy.tenant.tenant_id), voice=voice, text="PCM, twice as fast"
    )
    responses = await synthesize(proxy, request)
    pcm = audio_of(responses)
    assert not pcm.startswith(b"RIFF")
    assert audio_codec.transcribe(pcm) == "PCM, twice as fast"
    completion = responses[-1].completion
    assert (completion.format, completion.sample_rate) == (audio_pb2.AUDIO_FORMAT_PCM, 24_000)
    assert completion.usage.audio_seconds == pcm_seconds(len(pcm), 24_000)
    assert completion.usage.audio_seconds == pytest.approx(len("PCM, twice as fast") * 0.03)


async def test_an_open_breaker_sends_speech_to_the_next_speech_model(
    proxy: Proxy, provider_server: RunningProviderServer
) -> None:
    await book(provider_server, "speech-1", "status=500")
    for _ in range(3):
        responses = await synthesize(
            proxy, pb.SynthesizeRequest(scope=scope(proxy.tenant.tenant_id), text="hi")
        )
        assert responses[-1].completion.usage.model == "speech-2"
    # Two failures opened speech-1's breaker: the third call never went there.
    assert provider_server.state.requests == {"speech-1": 2, "speech-2": 3}
    listed = await proxy.stub.ListProviders(pb.ListProvidersRequest(), metadata=proxy.auth, timeout=10)
    states = {(p.name, p.models[0]): p.breaker_state for p in listed.providers}
    assert states[("local", "speech-1")] == pb.BREAKER_STATE_OPEN


async def test_a_cut_stream_after_audio_is_unavailable_and_never_billed(
    proxy: Proxy, provider_server: RunningProviderServer
) -> None:
    await book(provider_server, "speech-1", "cut=2", times=1)
    cut = pb.SynthesizeRequest(scope=scope(proxy.tenant.tenant_id), text=TEXT)
    received: list[pb.SynthesizeResponse] = []

    async def receive() -> None:
        async for response in proxy.stub.Synthesize(cut, metadata=proxy.auth, timeout=20):
            received.append(response)

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await receive()
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    relayed = len(audio_of(received))
    assert f"local/speech-1 cut its audio after {relayed} bytes" in (failed.value.details() or "")
    assert received
    assert not any(r.HasField("completion") for r in received)
    assert provider_server.state.requests == {"speech-1": 1}  # no fallback once audio went out
    billed = pb.SynthesizeRequest(scope=scope(proxy.tenant.tenant_id), text="after the cut")
    await synthesize(proxy, billed)
    records = await usage(proxy, until=1)
    assert [r.event.event_id for r in records] == [speech_event_id(billed.scope.request_id)]


async def test_speech_the_server_made_is_transcribed_back_with_its_seconds(proxy: Proxy) -> None:
    pcm = audio_codec.synthesize(TEXT, voice="alloy", speed=1.5)
    request = pb.TranscribeRequest(
        scope=scope(proxy.tenant.tenant_id),
        audio=audio_codec.wav_bytes(pcm),
        format=audio_pb2.AUDIO_FORMAT_WAV,
        language="en",
    )
    *deltas, last = await transcribe(proxy, request)
    assert len(deltas) > 3
    assert [d.delta.index for d in deltas] == list(range(len(deltas)))
    completion = last.completion
    assert "".join(d.delta.text for d in deltas) == completion.text == TEXT
    assert completion.usage.audio_seconds == pcm_seconds(len(pcm), 24_000)
    assert (completion.usage.provider, completion.usage.model) == ("local", "transcribe-1")
    [record] = await usage(proxy, until=1)
    assert record.event.event_id == transcription_event_id(request.scope.request_id)
    assert record.event.type == usage_pb2.USAGE_EVENT_TYPE_VOICE_TRANSCRIPTION
    assert record.event.dimensions == completion.usage


async def test_pcm_is_transcribed_at_the_rate_it_is_sent_at(proxy: Proxy) -> None:
    pcm = audio_codec.synthesize("sixteen kilohertz", voice="alloy")
    request = pb.TranscribeRequest(
        scope=scope(proxy.tenant.tenant_id),
        audio=pcm,
        format=audio_pb2.AUDIO_FORMAT_PCM,
        sample_rate=16_000,  # the same samples, read slower: 1.5 times as long, the same tones
    )
    completion = (await transcribe(proxy, request))[-1].completion
    assert completion.text == "sixteen kilohertz"
    assert completion.usage.audio_seconds == pcm_seconds(len(pcm), 16_000)


async def test_bad_voice_calls_are_refused_naming_the_field(proxy: Proxy) -> None:
    tenant = proxy.tenant.tenant_id
    unknown = pb.SynthesizeRequest(
        scope=scope(tenant), voice=audio_pb2.VoiceSettings(provider="elevenlabs"), text="hi"
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await synthesize(proxy, unknown)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("voice.provider: 'elevenlabs' is not configured")
    chat_only = pb.TranscribeRequest(
        scope=scope(tenant),
        voice=audio_pb2.VoiceSettings(provider="compat"),  # speaks audio, but offers no model
        audio=audio_codec.wav_bytes(audio_codec.synthesize("hi", voice="alloy")),
        format=audio_pb2.AUDIO_FORMAT_WAV,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await transcribe(proxy, chat_only)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("voice.transcription_model: compat has no default")
    not_wav = pb.TranscribeRequest(
        scope=scope(tenant), audio=b"ID3 an mp3", format=audio_pb2.AUDIO_FORMAT_WAV
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await transcribe(proxy, not_wav)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "audio: not a WAV file"
    elsewhere = pb.SynthesizeRequest(scope=scope("another-tenant"), text="hi")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await synthesize(proxy, elsewhere)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (refused.value.details() or "").startswith("scope.tenant_id:")


async def test_a_provider_refusal_is_the_callers_invalid_argument_in_its_words(
    proxy: Proxy, provider_server: RunningProviderServer
) -> None:
    await book(provider_server, "speech-1", "status=400", times=1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await synthesize(proxy, pb.SynthesizeRequest(scope=scope(proxy.tenant.tenant_id), text="hi"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("local answered HTTP 400: injected failure 400")
    assert provider_server.state.requests == {"speech-1": 1}  # a refusal is not worth a fallback


async def test_the_callers_deadline_bounds_the_provider_and_a_cancelled_call_is_not_billed(
    proxy: Proxy, provider_server: RunningProviderServer
) -> None:
    await book(provider_server, "speech-1", "slow=5", times=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    late = pb.SynthesizeRequest(scope=scope(proxy.tenant.tenant_id), text="too late")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await proxy.stub.Synthesize(late, metadata=proxy.auth, timeout=1.0).read()
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert loop.time() - started < 2.5
    await book(provider_server, "speech-1", "pace=0.3", times=1)
    cancelled = pb.SynthesizeRequest(scope=scope(proxy.tenant.tenant_id), text="cancelled midway")
    call = proxy.stub.Synthesize(cancelled, metadata=proxy.auth, timeout=20)
    first = await call.read()
    assert isinstance(first, pb.SynthesizeResponse)
    assert first.HasField("audio")
    call.cancel()
    billed = pb.SynthesizeRequest(scope=scope(proxy.tenant.tenant_id), text="billed")
    await synthesize(proxy, billed)
    records = await usage(proxy, until=1)
    assert [r.event.event_id for r in records] == [speech_event_id(billed.scope.request_id)]


async def test_the_default_provider_is_the_first_offering_the_kind_and_none_is_a_precondition() -> None:
    def audio(environ: dict[str, str]) -> AudioProviders:
        settings = ProxySettings.from_env(Env(environ))
        return AudioProviders(settings, Providers(settings, clock=lambda: 0.0, make_provider=ChatOnly))

    mixed = audio(
        {
            "MACP_AGENT_PROXY_PROVIDERS": "anthropic,ollama,local",
            "MACP_PROVIDER_ANTHROPIC_API_KEY": "sk-ant",
            "MACP_PROVIDER_OLLAMA_BASE_URL": "http://127.0.0.1:11434/v1",
            "MACP_PROVIDER_OLLAMA_MODELS": "llama3",
        }
    )
    try:
        assert mixed.resolve("speech", "", "") == ("local", "speech-1")  # ollama offers none
        assert mixed.resolve("transcription", "", "") == ("local", "transcribe-1")
        assert mixed.resolve("speech", "ollama", "kokoro") == ("ollama", "kokoro")
        with pytest.raises(InvalidArgument, match=r"^voice\.provider: 'anthropic' does not speak"):
            mixed.resolve("speech", "anthropic", "")
    finally:
        await mixed.close()
    chat_only = audio({"MACP_PROVIDER_ANTHROPIC_API_KEY": "sk-ant"})
    with pytest.raises(FailedPrecondition, match=r"^voice\.provider: no provider of speech is configured"):
        chat_only.resolve("speech", "", "")
    await chat_only.close()
