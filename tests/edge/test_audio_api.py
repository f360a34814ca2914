"""`POST /v1/audio/speech` and `POST /v1/audio/transcriptions` with the official OpenAI SDK pointed at
the edge (uvicorn, the fake orchestrator's Speak and Transcribe behind it, speaking the local
provider's real audio): the shapes the SDK reads, and every bad input refused with an error naming
the parameter before anything reached the orchestrator, so nothing refused is billed."""

from __future__ import annotations

import base64
import io
import json
import struct
import wave
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from services.provider_server import audio_codec
from services.stack.infra import Infrastructure
from tests.edge.fake_orchestrator import AGENT_ID, QUOTA_AGENT_ID, UNKNOWN_AGENT_ID
from tests.edge.orchestrator_world import EdgeWorld, edge_world
from tests.reference_wav import stdlib_wav

pytestmark = pytest.mark.integration

MAX_AUDIO_BYTES = 200_000
TEXT = "Hello, the weather is fine."


@pytest.fixture(scope="module")
async def world(infrastructure: Infrastructure) -> AsyncIterator[EdgeWorld]:
    async with edge_world(infrastructure, {"MACP_EDGE_MAX_AUDIO_BYTES": str(MAX_AUDIO_BYTES)}) as served:
        yield served


def speech_wav(text: str, sample_rate: int = audio_codec.SAMPLE_RATE) -> bytes:
    return audio_codec.wav_bytes(audio_codec.synthesize(text, voice="alloy"), sample_rate)


def wav_with(*, bits: int = 16, rate: int = 16_000, frames: bytes = b"\x00\x00" * 100) -> bytes:
    return stdlib_wav(frames, rate, width=bits // 8)


async def test_speech_streams_a_wav_that_decodes_back_to_its_text(
    world: EdgeWorld, sdk: openai.AsyncOpenAI
) -> None:
    chunks: list[bytes] = []
    async with sdk.audio.speech.with_streaming_response.create(
        model=AGENT_ID, voice="alloy", input=TEXT, response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        async for chunk in response.iter_bytes():
            chunks.append(chunk)
    with wave.open(io.BytesIO(b"".join(chunks))) as read:
        assert (read.getnchannels(), read.getsampwidth(), read.getframerate()) == (1, 2, 24_000)
        frames = read.readframes(read.getnframes())
        seconds = read.getnframes() / read.getframerate()
    assert audio_codec.transcribe(frames) == TEXT
    assert seconds == pytest.approx(audio_codec.seconds(audio_codec.synthesize(TEXT, voice="alloy")))
    spoken = world.fakes.orchestrator.spoken[-1]
    assert (spoken.agent_id, spoken.text, spoken.voice.voice) == (AGENT_ID, TEXT, "alloy")


async def test_speech_as_pcm_and_as_sse_events_with_usage(world: EdgeWorld, sdk: openai.AsyncOpenAI) -> None:
    pcm = await sdk.audio.speech.create(
        model=AGENT_ID, voice="verse", input=TEXT, response_format="pcm", speed=2
    )
    assert audio_codec.transcribe(pcm.content) == TEXT
    assert world.fakes.orchestrator.spoken[-1].voice.speed == 2

    async with httpx.AsyncClient(base_url=world.url, headers=world.headers()) as client:
        body = {"model": AGENT_ID, "voice": "alloy", "input": TEXT, "stream_format": "sse"}
        response = await client.post("/v1/audio/speech", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    deltas = [event for event in events if event["type"] == "speech.audio.delta"]
    assert len(deltas) > 1
    audio = b"".join(base64.b64decode(event["audio"]) for event in deltas)
    assert audio[:4] == b"RIFF"
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    assert done["usage"]["characters"] == len(TEXT)
    assert done["usage"]["audio_seconds"] == pytest.approx((len(audio) - 44) / 48_000)
    assert done["usage"]["total_tokens"] == done["usage"]["input_tokens"] + done["usage"]["output_tokens"]


async def test_a_transcription_answers_json_text_verbose_and_a_stream(
    world: EdgeWorld, sdk: openai.AsyncOpenAI
) -> None:
    wav = speech_wav(TEXT)
    seconds = audio_codec.seconds(audio_codec.synthesize(TEXT, voice="alloy"))
    plain = await sdk.audio.transcriptions.create(file=("hello.wav", wav), model=AGENT_ID)
    assert plain.text == TEXT
    assert plain.usage is not None
    assert plain.usage.type == "duration"
    assert plain.usage.seconds == pytest.approx(seconds)
    text = await sdk.audio.transcriptions.create(
        file=("hello.wav", wav), model=AGENT_ID, response_format="text"
    )
    assert text == TEXT
    verbose = await sdk.audio.transcriptions.create(
        file=("hello.wav", wav), model=AGENT_ID, response_format="verbose_json", language="en"
    )
    assert (verbose.text, verbose.language) == (TEXT, "en")
    assert verbose.duration == pytest.approx(seconds)
    assert world.fakes.orchestrator.heard[-1].language == "en"

    stream = await sdk.audio.transcriptions.create(file=("hello.wav", wav), model=AGENT_ID, stream=True)
    pieces: list[str] = []
    done_text = None
    async for event in stream:
        if event.type == "transcript.text.delta":
            pieces.append(event.delta)
        elif event.type == "transcript.text.done":
            done_text = event.text
    assert "".join(pieces) == done_text == TEXT


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"voice": "alloy", "input": TEXT, "response_format": "mp3"}, "response_format"),
        ({"voice": "alloy", "input": TEXT, "speed": 5}, "speed"),
        ({"voice": "alloy", "input": ""}, "input"),
        ({"voice": "alloy", "input": "x" * 4097}, "input"),
        ({"voice": "al loy", "input": TEXT}, "voice"),
        ({"voice": "alloy", "input": TEXT, "stream_format": "ogg"}, "stream_format"),
        ({"voice": "alloy", "input": TEXT, "n": 2}, "n"),
    ],
)
async def test_bad_speech_is_refused_naming_the_parameter_before_any_work(
    world: EdgeWorld, body: dict[str, object], param: str
) -> None:
    before = len(world.fakes.orchestrator.spoken)
    async with httpx.AsyncClient(base_url=world.url, headers=world.headers()) as client:
        response = await client.post("/v1/audio/speech", json={"model": AGENT_ID, **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: ")
    assert len(world.fakes.orchestrator.spoken) == before


def _pcm8_wav() -> bytes:
    return wav_with(bits=8, frames=b"\x80" * 200)


@pytest.mark.parametrize(
    ("upload", "status", "words"),
    [
        (b"ID3\x04 this is an mp3, not a wav" * 10, 400, "not a WAV file"),
        (b"just some text, not audio at all", 400, "not a WAV file"),
        (_pcm8_wav(), 400, "8-bit samples are not supported"),
        (wav_with(rate=4_000), 400, "sample rate 4000 Hz is out of range"),
        (wav_with(frames=b""), 400, "empty utterance"),
        (wav_with(frames=b"\x00\x00" * (MAX_AUDIO_BYTES // 2)), 413, f"at most {MAX_AUDIO_BYTES} bytes"),
    ],
    ids=["mp3", "text", "8-bit", "4-khz", "empty", "too-large"],
)
async def test_bad_audio_is_refused_naming_the_file_before_any_work(
    world: EdgeWorld, sdk: openai.AsyncOpenAI, upload: bytes, status: int, words: str
) -> None:
    before = len(world.fakes.orchestrator.heard)
    with pytest.raises(openai.APIStatusError) as raised:
        await sdk.audio.transcriptions.create(file=("utterance.wav", upload), model=AGENT_ID)
    assert raised.value.status_code == status
    assert words in raised.value.message
    body = raised.value.body
    assert isinstance(body, dict)
    assert body.get("param") == "file"
    assert len(world.fakes.orchestrator.heard) == before


async def test_a_body_past_the_limit_is_refused_before_it_is_read(world: EdgeWorld) -> None:
    boundary = "b0undary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n').encode()
    body = head + b"\x00" * (MAX_AUDIO_BYTES * 2) + f"\r\n--{boundary}--\r\n".encode()
    headers = {**world.headers(), "content-type": f"multipart/form-data; boundary={boundary}"}
    async with httpx.AsyncClient(base_url=world.url, headers=headers) as client:
        response = await client.post("/v1/audio/transcriptions", content=body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


async def test_other_form_fields_and_formats_are_refused_by_name(world: EdgeWorld) -> None:
    files = {"file": ("a.wav", speech_wav("hi"), "audio/wav")}
    async with httpx.AsyncClient(base_url=world.url, headers=world.headers()) as client:
        srt = await client.post(
            "/v1/audio/transcriptions", data={"model": AGENT_ID, "response_format": "srt"}, files=files
        )
        extra = await client.post(
            "/v1/audio/transcriptions", data={"model": AGENT_ID, "diarize": "true"}, files=files
        )
        language = await client.post(
            "/v1/audio/transcriptions", data={"model": AGENT_ID, "language": "English"}, files=files
        )
        json_body = await client.post("/v1/audio/transcriptions", json={"model": AGENT_ID})
    assert (srt.status_code, srt.json()["error"]["param"]) == (400, "response_format")
    assert (extra.status_code, extra.json()["error"]["param"]) == (400, "diarize")
    assert (language.status_code, language.json()["error"]["param"]) == (400, "language")
    assert json_body.status_code == 415


async def test_an_unknown_agent_and_a_quota_refusal_are_openai_errors(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.audio.speech.create(
            model=UNKNOWN_AGENT_ID, voice="alloy", input=TEXT, response_format="wav"
        )
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.RateLimitError) as quota:
        await sdk.audio.transcriptions.create(file=("a.wav", speech_wav("hi")), model=QUOTA_AGENT_ID)
    assert quota.value.code == "insufficient_quota"
    assert "voice_seconds" in quota.value.message
    with pytest.raises(openai.NotFoundError):
        await sdk.audio.speech.create(model="not-an-agent", voice="alloy", input=TEXT, response_format="wav")


async def test_speech_the_provider_cut_ends_the_body_short(world: EdgeWorld) -> None:
    """Audio already began: the only way left to say it failed is a body shorter than its header
    promised, which every HTTP client reports."""
    async with httpx.AsyncClient(base_url=world.url, headers=world.headers()) as client:
        body = {"model": AGENT_ID, "voice": "alloy", "input": "cut " + TEXT * 4, "response_format": "wav"}
        async with client.stream("POST", "/v1/audio/speech", json=body) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                await response.aread()
        sse = await client.post("/v1/audio/speech", json={**body, "stream_format": "sse"})
    events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1]["type"] == "error"
    assert "cut its audio" in events[-1]["error"]["message"]
    header_size = struct.unpack_from("<I", base64.b64decode(events[0]["audio"]), 40)[0]
    assert header_size > len(base64.b64decode(events[0]["audio"])) - 44
