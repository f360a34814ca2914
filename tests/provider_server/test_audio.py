"""OpenAI's audio API on the local provider server, through the official SDK: speech that is real
WAV or PCM (streamed in chunks, or as SSE events), transcriptions that give back exactly the text
the speech was made from, errors naming the field, and the behavior book's faults; and the codec
underneath, on its own (round trips at every speed and voice, durations, silence and noise)."""

from __future__ import annotations

import base64
import io
import json
import math
import random
import time
import wave
from typing import Any

import httpx
import httpx2
import openai
import pytest

from services.provider_server import audio_codec
from services.provider_server.audio_codec import (
    SAMPLE_RATE,
    read_wav,
    seconds,
    speech_chunks,
    synthesize,
    transcribe,
    wav_bytes,
    wav_header,
)
from services.provider_server.server import RunningProviderServer
from tests.reference_wav import stdlib_wav

LONG_TEXT = ("Seven agents met at noon to plan the week; nobody brought coffee. " * 64)[:4096]
TEXTS = ["Hello, world.", "Ça a été élégant, naïve Zoë — déjà vu", "🎉 party 👍🏽!", "x", LONG_TEXT]
SENTENCE = "The meeting moves to Thursday at ten."
SILENCE = stdlib_wav(bytes(4000), SAMPLE_RATE)
CHUNK_BYTES = audio_codec.SAMPLE_RATE // 10 * audio_codec.SAMPLE_WIDTH  # 100 ms per chunk


async def _speak(client: openai.AsyncOpenAI, text: str, **options: Any) -> tuple[bytes, int]:
    """The whole body of a speech request, and in how many reads it arrived."""
    options = {"model": "tts-1", "voice": "alloy", "response_format": "wav", **options}
    async with client.audio.speech.with_streaming_response.create(input=text, **options) as response:
        chunks = [chunk async for chunk in response.iter_bytes()]
    return b"".join(chunks), len(chunks)


# --- the codec ----------------------------------------------------------------------------------


@pytest.mark.parametrize("voice", ["alloy", "shimmer"])
@pytest.mark.parametrize("speed", [0.25, 1.0, 4.0])
def test_speech_decodes_to_exactly_its_text_at_every_speed_and_voice(speed: float, voice: str) -> None:
    for text in TEXTS:
        pcm = synthesize(text, voice=voice, speed=speed)
        assert transcribe(pcm, SAMPLE_RATE) == text, (text[:20], speed, voice)


def test_voices_change_the_samples_not_the_text() -> None:
    alloy, shimmer = (synthesize(SENTENCE, voice=voice) for voice in ("alloy", "shimmer"))
    assert alloy != shimmer
    assert len(alloy) == len(shimmer)
    assert transcribe(alloy) == transcribe(shimmer) == SENTENCE
    assert synthesize(SENTENCE, voice="alloy") == alloy  # exactly reproducible


def test_chunks_are_the_speech_cut_anywhere() -> None:
    whole = synthesize(SENTENCE, voice="echo", speed=1.5)
    for chunk_samples in (1, 997, 2_400, 10**6):
        chunks = list(speech_chunks(SENTENCE, voice="echo", speed=1.5, chunk_samples=chunk_samples))
        assert b"".join(chunks) == whole
        assert all(len(chunk) == 2 * chunk_samples for chunk in chunks[:-1])


@pytest.mark.parametrize("speed", [0.25, 1.0, 4.0])
def test_duration_is_proportional_to_the_text(speed: float) -> None:
    for text in ("a", "ab", "abcd", "é", LONG_TEXT[:100]):
        # 60 ms per UTF-8 byte at speed 1, to the sample.
        expected = round(audio_codec.SYMBOL_SAMPLES / speed) * len(text.encode()) / SAMPLE_RATE
        assert seconds(synthesize(text, voice="nova", speed=speed)) == expected
        assert audio_codec.speech_samples(text, speed) == expected * SAMPLE_RATE
    assert seconds(synthesize("abcd", voice="nova", speed=speed)) == pytest.approx(0.24 / speed, rel=0.01)


def test_silence_is_empty_and_noise_is_the_same_every_time() -> None:
    assert transcribe(bytes(2 * SAMPLE_RATE)) == ""
    assert transcribe(b"") == ""
    noise = random.Random(7).randbytes(4 * SAMPLE_RATE)
    assert transcribe(noise) == transcribe(bytes(noise)) == ""
    # Speech with noise around it still decodes; the noise adds nothing.
    assert transcribe(noise + bytes(200) + synthesize("hi", voice="ash") + noise) == "hi"


def test_making_a_long_text_is_mostly_concatenation() -> None:
    synthesize(LONG_TEXT, voice="coral")  # fills the symbol cache
    started = time.process_time()
    pcm = synthesize(LONG_TEXT, voice="coral")
    assert time.process_time() - started < 0.05
    assert len(pcm) == 2 * 4096 * audio_codec.SYMBOL_SAMPLES


def test_wav_files_are_written_and_read() -> None:
    pcm = synthesize(SENTENCE, voice="sage")
    assert wav_header(len(pcm)) + pcm == wav_bytes(pcm)
    assert read_wav(wav_bytes(pcm)) == (pcm, SAMPLE_RATE)
    assert read_wav(stdlib_wav(pcm, 16_000)) == (pcm, 16_000)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ID3\x04\x00" + bytes(100), "file: not a WAV file"),
        (
            stdlib_wav(bytes(100), SAMPLE_RATE, width=1),
            "file: 8-bit samples are not supported; 16-bit PCM only",
        ),
        (stdlib_wav(bytes(100), 1_000), "file: sample rate 1000 Hz is out of range 8000 to 48000"),
        (stdlib_wav(bytes(100), SAMPLE_RATE, channels=2), "file: 2 channels are not supported; mono only"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", "file: the WAV header is cut short"),
    ],
)
def test_read_wav_says_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        read_wav(data)


# --- speech through the SDK ---------------------------------------------------------------------


async def test_speech_streams_a_wav_of_the_text(openai_client: openai.AsyncOpenAI) -> None:
    text = SENTENCE * 2  # 2.2 s of audio, more than one read of the socket
    data, reads = await _speak(openai_client, text, speed=2.0)
    assert reads > 1
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, SAMPLE_RATE)
        frames = reader.getnframes()
        pcm = reader.readframes(frames)
    assert frames == len(text.encode()) * 720  # 30 ms per byte at speed 2
    assert len(data) == 44 + 2 * frames
    assert transcribe(pcm) == text


@pytest.mark.parametrize("audio_format", ["pcm", "wav"])
async def test_speech_as_sse_events_is_the_same_audio(
    openai_client: openai.AsyncOpenAI, audio_format: str
) -> None:
    raw, _ = await _speak(openai_client, SENTENCE, response_format=audio_format, voice="verse")
    async with openai_client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts",
        voice="verse",
        input=SENTENCE,
        response_format="wav" if audio_format == "wav" else "pcm",  # the SDK's type is a Literal
        stream_format="sse",
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) async for line in response.iter_lines() if line.startswith("data: ")]
    *deltas, done = events
    assert {event["type"] for event in deltas} == {"speech.audio.delta"}
    pcm = read_wav(raw)[0] if audio_format == "wav" else raw
    assert len(deltas) == -(-len(pcm) // CHUNK_BYTES)
    assert b"".join(base64.b64decode(event["audio"]) for event in deltas) == raw
    assert done["type"] == "speech.audio.done"
    # Input: characters / 4 rounded up; output: one token per 50 ms of audio.
    assert done["usage"] == {
        "input_tokens": -(-len(SENTENCE) // 4),
        "output_tokens": math.ceil(seconds(pcm) * 20),
        "total_tokens": -(-len(SENTENCE) // 4) + math.ceil(seconds(pcm) * 20),
    }


# --- transcriptions through the SDK -------------------------------------------------------------


async def test_a_transcription_gives_back_the_text_of_the_speech(openai_client: openai.AsyncOpenAI) -> None:
    wav, _ = await _speak(openai_client, SENTENCE, speed=3.0)
    transcription = await openai_client.audio.transcriptions.create(file=("a.wav", wav), model="whisper-1")
    assert transcription.text == SENTENCE
    assert transcription.usage is not None
    assert transcription.usage.type == "duration"
    assert transcription.usage.seconds == seconds(read_wav(wav)[0])

    plain = await openai_client.audio.transcriptions.create(
        file=("a.wav", wav), model="whisper-1", response_format="text"
    )
    assert plain == SENTENCE

    verbose = await openai_client.audio.transcriptions.create(
        file=("a.wav", wav), model="whisper-1", response_format="verbose_json", language="en"
    )
    assert verbose.text == SENTENCE
    assert verbose.duration == pytest.approx(len(SENTENCE) * 0.02)  # 20 ms per byte at speed 3
    assert verbose.language == "en"
    assert verbose.usage is not None
    assert verbose.usage.seconds == verbose.duration


async def test_a_streamed_transcription_is_word_deltas_then_the_text(
    openai_client: openai.AsyncOpenAI,
) -> None:
    wav, _ = await _speak(openai_client, SENTENCE)
    stream = await openai_client.audio.transcriptions.create(
        file=("a.wav", wav), model="gpt-4o-transcribe", stream=True, prompt="A calendar note."
    )
    events = [event async for event in stream]
    *deltas, done = events
    assert [event.type for event in deltas] == ["transcript.text.delta"] * len(SENTENCE.split())
    assert "".join(event.delta for event in deltas if event.type == "transcript.text.delta") == SENTENCE
    assert done.type == "transcript.text.done"
    assert done.text == SENTENCE
    assert done.usage is not None
    audio_tokens = math.ceil(len(SENTENCE) * 0.06 * 20)  # one token per 50 ms of audio, rounded up
    prompt_tokens = -(-len("A calendar note.") // 4)
    assert done.usage.input_tokens == audio_tokens + prompt_tokens
    assert done.usage.output_tokens == -(-len(SENTENCE) // 4)
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"response_format": "mp3"}, "response_format"),
        ({"speed": 5}, "speed"),
        ({"input": ""}, "input"),
        ({"input": "a" * 4097}, "input"),
        ({"stream_format": "ogg"}, "stream_format"),
    ],
)
async def test_a_bad_speech_request_is_a_400_naming_the_field(
    openai_client: openai.AsyncOpenAI, options: dict[str, Any], field: str
) -> None:
    request: dict[str, Any] = {"model": "tts-1", "voice": "alloy", "input": "hi", "response_format": "wav"}
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.audio.speech.create(**{**request, **options})
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["message"].startswith(f"{field}: ")
    assert refused.value.body == {
        "message": refused.value.body["message"],
        "type": "invalid_request_error",
        "param": field,
        "code": None,
    }


@pytest.mark.parametrize(
    ("upload", "options", "field"),
    [
        (("a.mp3", b"ID3\x04" + bytes(500), "audio/mpeg"), {}, "file"),
        (("a.wav", stdlib_wav(bytes(4000), SAMPLE_RATE, width=1), "audio/wav"), {}, "file"),
        (("a.wav", stdlib_wav(bytes(4000), 4_000), "audio/wav"), {}, "file"),
        (("a.wav", SILENCE, "audio/wav"), {"response_format": "srt"}, "response_format"),
        (("a.wav", SILENCE, "audio/wav"), {"response_format": "vtt"}, "response_format"),
    ],
)
async def test_a_bad_transcription_request_is_a_400_naming_the_field(
    openai_client: openai.AsyncOpenAI, upload: tuple[str, bytes, str], options: dict[str, Any], field: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.audio.transcriptions.create(file=upload, model="whisper-1", **options)
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["message"].startswith(f"{field}: ")
    assert refused.value.body["param"] == field


async def test_a_file_over_25_mb_is_refused(openai_client: openai.AsyncOpenAI) -> None:
    big = stdlib_wav(bytes(audio_codec.SAMPLE_WIDTH * 13 * 1024 * 1024), SAMPLE_RATE)  # 26 MB of silence
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.audio.transcriptions.create(file=("a.wav", big), model="whisper-1")
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == "file"
    assert "25 MB" in refused.value.body["message"]


# --- behaviors ----------------------------------------------------------------------------------


async def test_a_booked_status_fails_both_routes_and_requests_are_counted(
    provider_server: RunningProviderServer, openai_client: openai.AsyncOpenAI
) -> None:
    wav, _ = await _speak(openai_client, "ok")
    async with httpx.AsyncClient(base_url=provider_server.base_url) as admin:
        for model in ("tts-broken", "stt-broken"):
            booked = await admin.post("/admin/behaviors", json={"model": model, "behavior": "status=500"})
            assert booked.status_code == 201
        with pytest.raises(openai.InternalServerError):
            await openai_client.audio.speech.create(
                model="tts-broken", voice="alloy", input="hi", response_format="wav"
            )
        with pytest.raises(openai.InternalServerError):
            await openai_client.audio.transcriptions.create(file=("a.wav", wav), model="stt-broken")
        stats = (await admin.get("/admin/stats")).json()
    assert stats["requests"] == {"tts-1": 1, "tts-broken": 1, "stt-broken": 1}


async def test_a_cut_ends_the_audio_short_of_what_its_header_promised(
    openai_client: openai.AsyncOpenAI,
) -> None:
    received = bytearray()
    # The SDK hands the body's bytes over as they come: the transport's error reaches the reader.
    with pytest.raises(httpx2.RemoteProtocolError, match="incomplete"):  # noqa: PT012
        async with openai_client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice="alloy",
            input=SENTENCE,
            response_format="wav",
            extra_headers={"x-macp-behavior": "cut=2"},
        ) as response:
            async for chunk in response.iter_bytes():
                received += chunk
    promised = int.from_bytes(received[40:44], "little")
    assert promised == len(SENTENCE) * audio_codec.SYMBOL_SAMPLES * 2
    assert len(received) == 44 + 2 * CHUNK_BYTES  # the header, then two chunks of 100 ms


async def test_a_cut_ends_a_streamed_transcription_after_its_deltas(
    openai_client: openai.AsyncOpenAI,
) -> None:
    wav, _ = await _speak(openai_client, SENTENCE, speed=4.0)
    stream = await openai_client.audio.transcriptions.create(
        file=("a.wav", wav),
        model="gpt-4o-transcribe",
        stream=True,
        extra_headers={"x-macp-behavior": "cut=2"},
    )
    deltas: list[str] = []
    with pytest.raises(openai.APIConnectionError):  # noqa: PT012
        async for event in stream:
            assert event.type == "transcript.text.delta"
            deltas.append(event.delta)
    assert "".join(deltas) == "The meeting "


async def test_a_slow_first_byte_times_the_sdk_out(openai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APITimeoutError):
        await openai_client.audio.speech.create(
            model="tts-1",
            voice="alloy",
            input="hi",
            response_format="pcm",
            extra_headers={"x-macp-behavior": "slow=0.6"},
            timeout=0.3,
        )
