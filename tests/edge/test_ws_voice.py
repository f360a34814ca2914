"""A spoken message over the WebSocket (docs/websocket.md, "Voice"): real audio of the local
provider's codec, sent as binary or base64 frames through the edge served by uvicorn to the fake
orchestrator, which hears it with the same codec and speaks its answer; each bad utterance refused
by name before anything reaches the orchestrator; and the SSE stream carrying the speech events."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from services.provider_server import audio_codec
from services.stack.infra import Infrastructure
from tests.edge.orchestrator_world import EdgeWorld, edge_world
from tests.edge.test_sse import sse_events

pytestmark = pytest.mark.integration

# Small enough that a second of 48 kHz audio passes it before the pace rule's 2 s burst is used.
MAX_AUDIO_BYTES = 100_000
CHUNK = 8_000  # bytes of audio per frame


@pytest.fixture(scope="module")
async def world(infrastructure: Infrastructure) -> AsyncIterator[EdgeWorld]:
    async with edge_world(infrastructure, {"MACP_EDGE_MAX_AUDIO_BYTES": str(MAX_AUDIO_BYTES)}) as served:
        yield served


def opened(world: EdgeWorld) -> connect:
    return connect(world.ws_url, additional_headers=world.headers(), compression=None)


async def send(ws: ClientConnection, **frame: Any) -> None:
    await ws.send(json.dumps(frame))


async def frame_of(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(5):
        frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def until_round_done(ws: ClientConnection) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not frames or frames[-1].get("kind") != "round_completed":
            frames.append(json.loads(await ws.recv()))
    return frames


async def send_audio(ws: ClientConnection, conversation: str, audio: bytes, *, binary: bool) -> None:
    for start in range(0, len(audio), CHUNK):
        piece = audio[start : start + CHUNK]
        if binary:  # in two fragments: the edge takes the message they make
            await ws.send([piece[: len(piece) // 2], piece[len(piece) // 2 :]])
        else:
            await send(
                ws, action="audio", conversation_id=conversation, audio=base64.b64encode(piece).decode()
            )


def spoken(frames: list[dict[str, Any]]) -> str:
    """What the speech_audio events of `frames` say, decoded back to text by the codec."""
    chunks = [frame["event"]["speech_audio"] for frame in frames if frame.get("kind") == "speech_audio"]
    assert [chunk["chunk"]["index"] for chunk in chunks] == list(range(len(chunks)))
    assert {chunk["format"] for chunk in chunks} == {"AUDIO_FORMAT_WAV"}
    audio = b"".join(base64.b64decode(chunk["chunk"]["data"]) for chunk in chunks)
    pcm, rate = audio_codec.read_wav(audio)
    return audio_codec.transcribe(pcm, rate)


def utterances_received(world: EdgeWorld, conversation: str) -> list[pb.Utterance]:
    return [
        request.utterance
        for request in world.orchestrator.requests
        if isinstance(request, pb.ConverseRequest)
        and request.conversation_id == conversation
        and request.WhichOneof("event") == "utterance"
    ]


def speech(text: str) -> bytes:
    return audio_codec.synthesize(text, voice="alloy")


# A spoken message and its spoken answer.


@pytest.mark.parametrize(("binary", "audio_format"), [(True, "wav"), (False, "pcm")])
async def test_a_spoken_message_is_heard_answered_and_the_answer_spoken(
    world: EdgeWorld, binary: bool, audio_format: str
) -> None:
    conversation = str(uuid.uuid4())
    pcm = speech("hello there")
    audio = audio_codec.wav_bytes(pcm) if audio_format == "wav" else pcm
    rate = {"sample_rate": audio_codec.SAMPLE_RATE} if audio_format == "pcm" else {}
    async with opened(world) as ws:
        await send(ws, action="subscribe", conversation_id=conversation)
        assert (await frame_of(ws))["type"] == "subscribed"
        await send(ws, action="utterance_start", conversation_id=conversation, format=audio_format, **rate)
        started = await frame_of(ws)
        assert (started["type"], started["action"]) == ("ack", "utterance_start")
        message_id = started["message_id"]
        await send_audio(ws, conversation, audio, binary=binary)
        await send(ws, action="utterance_end", conversation_id=conversation, request_id="end-1")
        ended = await frame_of(ws)
        assert (ended["type"], ended["message_id"], ended["request_id"]) == ("ack", message_id, "end-1")
        frames = await until_round_done(ws)
    kinds = [frame["kind"] for frame in frames]
    heard = frames[0]["event"]["utterance_transcribed"]
    assert (kinds[0], heard["message_id"], heard["text"]) == (
        "utterance_transcribed",
        message_id,
        "hello there",
    )
    assert heard["audio_seconds"] == pytest.approx(audio_codec.seconds(pcm))
    assert kinds[1] == "message_accepted"
    assert kinds[-3:] == ["speech_completed", "turn_completed", "round_completed"]
    assert spoken(frames) == "echo: hello there"
    completed = frames[-3]["event"]["speech_completed"]
    assert completed["sentences"] == 1
    assert completed["turn_id"] == frames[-2]["event"]["turn_completed"]["turn_id"]
    (sent,) = utterances_received(world, conversation)
    assert (sent.message_id, sent.speak_answers, sent.audio) == (message_id, True, audio)


async def test_speak_false_gets_a_written_answer_and_a_message_may_ask_to_be_spoken(world: EdgeWorld) -> None:
    conversation, message_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with opened(world) as ws:
        await send(
            ws,
            action="utterance_start",
            conversation_id=conversation,
            format="wav",
            speak=False,
            message_id=message_id,
        )
        assert (await frame_of(ws))["message_id"] == message_id
        await send_audio(ws, conversation, audio_codec.wav_bytes(speech("quiet")), binary=True)
        await send(ws, action="utterance_end", conversation_id=conversation)
        assert (await frame_of(ws))["type"] == "ack"
        quiet = await until_round_done(ws)
        await send(ws, action="message", conversation_id=conversation, text="say it", speak=True)
        assert (await frame_of(ws))["type"] == "ack"
        loud = await until_round_done(ws)
    assert quiet[0]["event"]["utterance_transcribed"]["text"] == "quiet"
    assert not [frame for frame in quiet if frame["kind"].startswith("speech_")]
    assert spoken(loud) == "echo: say it"


async def test_silence_is_sent_and_the_orchestrator_says_nothing_was_heard(world: EdgeWorld) -> None:
    conversation = str(uuid.uuid4())
    async with opened(world) as ws:
        await send(ws, action="utterance_start", conversation_id=conversation, **PCM_16K)
        assert (await frame_of(ws))["type"] == "ack"
        await ws.send(bytes(16_000))  # half a second of silence: audio, so the edge sends it
        await send(ws, action="utterance_end", conversation_id=conversation)
        assert (await frame_of(ws))["type"] == "ack"
        heard, refused = await frame_of(ws), await frame_of(ws)
    assert heard["event"]["utterance_transcribed"]["text"] == ""
    assert refused["event"]["error"]["detail"]["message"].startswith("audio: nothing was heard")


# Refusals: by name, the utterance dropped, the connection kept, nothing sent.


def wav_header(*, channels: int = 1, rate: int = 24_000, bits: int = 16) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    return b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + b"\0\0\0\0"


INVALID, EXHAUSTED = "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"
WAV: dict[str, Any] = {"format": "wav"}
PCM_16K: dict[str, Any] = {"format": "pcm", "sample_rate": 16_000}
# name: (utterance_start's fields, the audio, the error's code, how its message starts)
BAD_UTTERANCES: dict[str, tuple[dict[str, Any], bytes, str, str]] = {
    "too big": (
        {"format": "pcm", "sample_rate": 48_000},
        b"\1\0" * (MAX_AUDIO_BYTES // 2 + CHUNK),
        INVALID,
        f"audio: more than {MAX_AUDIO_BYTES} bytes",
    ),
    "not a wav": (WAV, b"ID3\x04" + bytes(60), INVALID, "audio: not a WAV file"),
    "stereo wav": (WAV, wav_header(channels=2), INVALID, "audio: 2 channels"),
    "wav too fast a rate": (WAV, wav_header(rate=96_000), INVALID, "audio: sample rate 96000 Hz"),
    "wav cut short": (WAV, b"RIFF\0\0", INVALID, "audio: the WAV header is cut short"),
    "empty wav": (WAV, wav_header(), INVALID, "audio: the utterance holds no samples"),
    "empty pcm": (PCM_16K, b"", INVALID, "audio: the utterance holds no samples"),
    "half a sample": (PCM_16K, b"\1\2\3", INVALID, "audio: 3 bytes of PCM"),
    # 10 s of 8 kHz audio at once, in 1 s frames: past the 2 s burst by its third second.
    "faster than real time": (
        {"format": "pcm", "sample_rate": 8_000},
        b"\1\0" * 80_000,
        EXHAUSTED,
        "audio: 3.0 s of audio arrived in 0.",
    ),
}


@pytest.mark.parametrize("name", BAD_UTTERANCES)
async def test_a_bad_utterance_is_refused_by_name_and_dropped(world: EdgeWorld, name: str) -> None:
    start, audio, code, message = BAD_UTTERANCES[name]
    conversation = str(uuid.uuid4())
    async with opened(world) as ws:
        await send(ws, action="subscribe", conversation_id=conversation)
        assert (await frame_of(ws))["type"] == "subscribed"
        await send(ws, action="utterance_start", conversation_id=conversation, **start)
        assert (await frame_of(ws))["type"] == "ack"
        if name == "faster than real time":
            await send_audio_in(ws, audio, 16_000)
        else:
            await send_audio(ws, conversation, audio, binary=True)
        await send(ws, action="utterance_end", conversation_id=conversation)
        error = await frame_of(ws)
        assert (error["type"], error["code"], error["conversation_id"]) == ("error", code, conversation)
        assert error["message"].startswith(message), error["message"]
        # Dropped: the rest of its audio and its end (again) find no utterance; the connection
        # serves on.
        await send(ws, action="utterance_end", conversation_id=conversation)
        replies = await frames_until_pong(ws)
        assert all(reply["type"] == "error" for reply in replies)
        assert replies[-1]["message"].startswith("conversation_id: no utterance is open")
    assert utterances_received(world, conversation) == []


async def send_audio_in(ws: ClientConnection, audio: bytes, size: int) -> None:
    for start in range(0, len(audio), size):
        await ws.send(audio[start : start + size])


async def frames_until_pong(ws: ClientConnection) -> list[dict[str, Any]]:
    """The frames before the answer to a ping sent now."""
    await send(ws, action="ping", request_id="still-there")
    frames: list[dict[str, Any]] = []
    while (frame := await frame_of(ws))["type"] != "pong":
        frames.append(frame)
    return frames


BAD_STARTS: dict[str, tuple[dict[str, Any], str]] = {
    "format": ({"format": "mp3"}, "format: must be one of wav, pcm"),
    "pcm without a rate": ({"format": "pcm"}, "sample_rate: required for format pcm"),
    "pcm rate out of range": (
        {"format": "pcm", "sample_rate": 96_000},
        "sample_rate: must be 8000 to 48000 Hz",
    ),
    "wav with a rate": ({"format": "wav", "sample_rate": 16_000}, "sample_rate: only for format pcm"),
    "language": ({"format": "wav", "language": "english"}, "language: does not match"),
    "message id": ({"format": "wav", "message_id": "m-1"}, "message_id: must be a valid UUID"),
    "speak": ({"format": "wav", "speak": "yes"}, "speak: must be a JSON boolean"),
}


@pytest.mark.parametrize("name", BAD_STARTS)
async def test_a_bad_utterance_start_is_refused_by_name(world: EdgeWorld, name: str) -> None:
    fields, message = BAD_STARTS[name]
    conversation = str(uuid.uuid4())
    async with opened(world) as ws:
        await send(ws, action="utterance_start", conversation_id=conversation, **fields)
        error = await frame_of(ws)
        assert (error["code"], error["action"]) == ("INVALID_ARGUMENT", "utterance_start")
        assert error["message"].startswith(message), error["message"]
        # Nothing was opened: audio for it is refused.
        await ws.send(b"\0\0")
        assert (await frame_of(ws))["message"].startswith("audio: a binary frame is an utterance's audio")


async def test_frames_out_of_order_are_refused_by_name_and_the_connection_serves_on(world: EdgeWorld) -> None:
    conversation, other = str(uuid.uuid4()), str(uuid.uuid4())
    async with opened(world) as ws:
        await ws.send(b"\0\0")
        error = await frame_of(ws)
        assert (error["code"], error["action"]) == ("INVALID_ARGUMENT", "audio")
        assert error["message"].startswith("audio: a binary frame is an utterance's audio")
        await send(ws, action="audio", conversation_id=conversation, audio="AAA=")
        assert (await frame_of(ws))["message"].startswith("audio: no utterance is open in this conversation")
        await send(ws, action="utterance_end", conversation_id=conversation)
        assert (await frame_of(ws))["message"].startswith("conversation_id: no utterance is open")
        await send(
            ws, action="utterance_start", conversation_id=conversation, format="pcm", sample_rate=16_000
        )
        assert (await frame_of(ws))["type"] == "ack"
        await send(ws, action="utterance_start", conversation_id=conversation, format="wav")
        assert (await frame_of(ws))["message"].startswith("conversation_id: an utterance is already open")
        await send(ws, action="audio", conversation_id=conversation, audio="not base64!")
        assert (await frame_of(ws))["message"].startswith("audio: must be base64")
        # Two open: a binary frame cannot say whose it is.
        await send(ws, action="utterance_start", conversation_id=other, format="wav")
        assert (await frame_of(ws))["type"] == "ack"
        await ws.send(b"\0\0")
        assert (await frame_of(ws))["message"].startswith("audio: utterances are open in 2 conversations")
        # Cancelled: its end finds nothing, and nothing was sent.
        for conversation_id in (conversation, other):
            await send(ws, action="utterance_cancel", conversation_id=conversation_id)
            assert (await frame_of(ws))["type"] == "ack"
        await send(ws, action="utterance_end", conversation_id=conversation)
        assert (await frame_of(ws))["message"].startswith("conversation_id: no utterance is open")
        assert await frames_until_pong(ws) == []
    assert utterances_received(world, conversation) == utterances_received(world, other) == []


async def test_a_binary_frame_over_the_frame_limit_closes_with_1009(world: EdgeWorld) -> None:
    async with opened(world) as ws:
        await send(ws, action="utterance_start", conversation_id=str(uuid.uuid4()), format="wav")
        assert (await frame_of(ws))["type"] == "ack"
        await ws.send(bytes(65_537))
        async with asyncio.timeout(5):
            with pytest.raises(ConnectionClosed):
                await ws.recv()
    assert ws.close_code == 1009


# SSE carries the same events.


async def test_sse_carries_the_utterance_and_speech_events(world: EdgeWorld) -> None:
    conversation = str(uuid.uuid4())
    async with (
        world.client() as client,
        client.stream(
            "GET", f"/v1/conversations/{conversation}/events", headers={"accept": "text/event-stream"}
        ) as response,
        opened(world) as ws,
    ):
        assert response.status_code == 200
        await send(ws, action="utterance_start", conversation_id=conversation, format="wav")
        assert (await frame_of(ws))["type"] == "ack"
        await send_audio(ws, conversation, audio_codec.wav_bytes(speech("over sse")), binary=True)
        await send(ws, action="utterance_end", conversation_id=conversation)
        assert (await frame_of(ws))["type"] == "ack"
        events = []
        async with asyncio.timeout(10):
            async for event in sse_events(response):
                if event.comment:
                    continue
                events.append(event)
                if event.event == "round_completed":
                    break
    names = [event.event for event in events]
    assert names[0] == "utterance_transcribed"
    assert events[0].data["utterance_transcribed"]["text"] == "over sse"
    assert "speech_audio" in names
    assert names[-3] == "speech_completed"
    frames = [{"kind": event.event, "event": event.data} for event in events]
    assert spoken(frames) == "echo: over sse"
