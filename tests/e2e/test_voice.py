"""Voice end to end over the whole mesh: the official OpenAI SDK pointed at Envoy's front listener,
the edge, the orchestrator (voice seconds held and committed at metering), the agent proxy and the
local provider server's real audio; and a conversation round spoken in and out over Converse.

What is checked is what a paying user would check: the audio decodes with the standard library
and says what was asked, the seconds metering recorded are the audio's own, a free tenant is
refused before any provider is called, overage is priced, and nothing refused is billed."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import time
import uuid
import wave
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import openai
import pytest
import websockets
from google.protobuf.timestamp_pb2 import Timestamp
from macp.common.v1 import audio_pb2, principal_pb2
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.provider_server import audio_codec
from services.runtime.auth.settings import service_audience
from tests.tokens import bearer
from tests.world import World

pytestmark = pytest.mark.integration

SPEECH_MODEL = "speech-1"  # the local provider's default speech model
QUESTION = "What is the weather like today?"


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own."""
    return await module_world.other_tenant()


def sdk(world: World) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{world.front_url}/v1", api_key=world.edge_token, max_retries=0)


async def voice_seconds(world: World, since: float, at_least: float = 0.0) -> float:
    """The tenant's metered voice seconds (from its books, after the Kafka sink: up to 20 s)."""
    metering = metering_grpc.MeteringServiceStub(world.channel)
    token = await world.tokens.user_token(world.tenant, [service_audience("metering")])
    period = metering_pb.Period(
        start_time=Timestamp(seconds=int(since) - 60), end_time=Timestamp(seconds=int(time.time()) + 60)
    )
    seconds = 0.0
    for _ in range(100):
        usage = await metering.GetUsage(
            metering_pb.GetUsageRequest(
                tenant_id=world.tenant.tenant_id, period=period, group_by=metering_pb.GROUP_BY_EVENT_TYPE
            ),
            metadata=bearer(token),
            timeout=10,
        )
        seconds = usage.totals.voice_seconds
        if seconds >= at_least > 0 or (at_least == 0 and seconds > 0):
            return seconds
        await asyncio.sleep(0.2)
    return seconds


async def test_the_sdk_speaks_and_hears_through_an_agent_metered_by_the_audios_seconds(world: World) -> None:
    started = time.time()
    agent = await world.agent("Speaker", voice=audio_pb2.VoiceSettings(voice="verse"))
    client = sdk(world)
    try:
        async with client.audio.speech.with_streaming_response.create(
            model=agent.id, voice="alloy", input=QUESTION, response_format="wav"
        ) as response:
            reads = [chunk async for chunk in response.iter_bytes()]
        transcript = await client.audio.transcriptions.create(file=("q.wav", b"".join(reads)), model=agent.id)
    finally:
        await client.close()
    assert len(reads) > 1, "the speech streams"
    with wave.open(io.BytesIO(b"".join(reads))) as read:
        spoken = read.getnframes() / read.getframerate()
        frames = read.readframes(read.getnframes())
    assert audio_codec.transcribe(frames) == QUESTION
    assert transcript.text == QUESTION
    assert transcript.usage is not None
    assert transcript.usage.type == "duration"
    assert transcript.usage.seconds == pytest.approx(spoken)
    # Both calls metered by the audio's own length: made, then heard.
    assert await voice_seconds(world, started, 2 * spoken) == pytest.approx(2 * spoken)
    assert await world.open_holds() == []
    async with httpx.AsyncClient(base_url=world.front_url) as http:
        usage = await http.get("/v1/usage", headers={"authorization": f"Bearer {world.edge_token}"})
    assert usage.status_code == 200
    assert usage.json()["totals"]["voiceMinutes"] == pytest.approx(2 * spoken / 60)


async def test_a_free_tenant_is_refused_before_any_provider_call_and_nothing_is_billed(world: World) -> None:
    """The free tier's 5 minutes: a 4,096-character text needs more than that held up front."""
    started = time.time()
    agent = await world.agent("Talker")
    calls = world.provider_server.state.requests.get(SPEECH_MODEL, 0)
    client = sdk(world)
    try:
        with pytest.raises(openai.RateLimitError) as refused:
            await client.audio.speech.create(
                model=agent.id, voice="alloy", input="word " * 819, response_format="wav"
            )
    finally:
        await client.close()
    assert refused.value.code == "insufficient_quota"
    assert "voice" in refused.value.message.lower()
    assert world.provider_server.state.requests.get(SPEECH_MODEL, 0) == calls
    await asyncio.sleep(1)
    assert await voice_seconds(world, started) == 0
    assert await world.open_holds() == []


async def test_voice_past_the_allowance_is_priced_in_the_invoice_preview(world: World) -> None:
    """Pro's terms on a small allowance (an enterprise plan priced as pro: one voice minute
    included, $0.10 a minute past it), so the overage takes seconds of audio, not an hour."""
    minute = metering_pb.PlanAllowance(
        meter=metering_pb.METER_VOICE_SECONDS,
        included_quantity=60,
        hard_limit=False,
        overage_price_cents=10,
        overage_block_size=60,
    )
    await world.set_plan(principal_pb2.TIER_ENTERPRISE, [minute])
    started = time.time()
    agent = await world.agent("Narrator")
    client = sdk(world)
    try:
        for _ in range(2):  # about 90 s of speech each, at a quarter speed
            await client.audio.speech.create(
                model=agent.id, voice="alloy", input="x" * 380, response_format="pcm", speed=0.25
            )
    finally:
        await client.close()
    seconds = await voice_seconds(world, started, 120)
    assert seconds > 120
    async with httpx.AsyncClient(base_url=world.front_url) as http:
        preview = await http.get(
            "/v1/usage/invoice-preview", headers={"authorization": f"Bearer {world.edge_token}"}
        )
    assert preview.status_code == 200
    (line,) = [item for item in preview.json()["lineItems"] if item["meter"] == "METER_VOICE_SECONDS"]
    assert int(line["quantity"]) == math.ceil(seconds)
    assert int(line["overageQuantity"]) == math.ceil(seconds) - 60
    # $0.10 a minute, by the second, rounded up to a whole cent (services/metering/invoices.py).
    assert int(line["amountCents"]) == math.ceil((math.ceil(seconds) - 60) * 10 / 60)


async def test_a_spoken_round_hears_the_user_and_speaks_each_answer(world: World) -> None:
    agents = [await world.agent("Ada"), await world.agent("Bo")]
    conversation = await world.conversation(agents)
    started = time.time()
    utterance = pb.Utterance(
        message_id=str(uuid.uuid4()),
        audio=audio_codec.wav_bytes(audio_codec.synthesize(QUESTION, voice="alloy")),
        format=audio_pb2.AUDIO_FORMAT_WAV,
        speak_answers=True,
    )
    requests: asyncio.Queue[pb.ConverseRequest | None] = asyncio.Queue()
    await requests.put(pb.ConverseRequest(conversation_id=conversation.id, join=pb.Join()))
    await requests.put(pb.ConverseRequest(conversation_id=conversation.id, utterance=utterance))

    async def sent() -> AsyncIterator[pb.ConverseRequest]:
        while (request := await requests.get()) is not None:
            yield request

    events: list[pb.ConversationEvent] = []
    stream = world.orchestrator.Converse(sent(), metadata=world.as_user)
    async with asyncio.timeout(30):
        async for response in stream:
            events.append(response.event)
            if response.event.HasField("round_completed"):
                break
    await requests.put(None)
    stream.cancel()

    kinds = [event.WhichOneof("payload") for event in events]
    heard = next(event.utterance_transcribed for event in events if event.HasField("utterance_transcribed"))
    assert heard.text == QUESTION
    assert kinds.index("utterance_transcribed") < kinds.index("message_accepted")
    stored = await world.messages(conversation.id)
    assert stored[0].text == QUESTION
    answers = [event.turn_completed for event in events if event.HasField("turn_completed")]
    assert len(answers) == 2
    spoken_total = 0.0
    for answer in answers:
        mine = [e for e in events if answer.turn_id in (e.speech_audio.turn_id, e.speech_completed.turn_id)]
        chunks = [e.speech_audio for e in mine if e.HasField("speech_audio")]
        sentences: dict[int, bytes] = {}
        for chunk in chunks:
            sentences[chunk.sentence] = sentences.get(chunk.sentence, b"") + chunk.chunk.data
        said = " ".join(
            audio_codec.transcribe(audio_codec.read_wav(sentences[index])[0]) for index in sorted(sentences)
        )
        assert said == " ".join(answer.text.split())
        (completed,) = [e.speech_completed for e in mine if e.HasField("speech_completed")]
        assert completed.sentences == len(sentences)
        # The turn ends once its answer was spoken: its speech completes before it does.
        ended = next(i for i, e in enumerate(events) if e.turn_completed.turn_id == answer.turn_id)
        assert events.index(mine[-1]) < ended
        spoken_total += completed.audio_seconds
    # Every second heard and made is metered once: the utterance and each answer's sentences.
    total = heard.audio_seconds + spoken_total
    assert await voice_seconds(world, started, total - 0.01) == pytest.approx(total)
    assert await world.open_holds() == []


async def test_a_conversation_that_runs_out_of_voice_minutes_goes_on_in_text(world: World) -> None:
    """The conversation asks for every answer spoken; its tenant may make three seconds of speech:
    the answer is spoken until the next sentence would pass them, then an error says so and the
    text goes on to the end, every hold settled."""
    seconds = metering_pb.PlanAllowance(
        meter=metering_pb.METER_VOICE_SECONDS, included_quantity=3, hard_limit=True, overage_block_size=1
    )
    turns = metering_pb.PlanAllowance(
        meter=metering_pb.METER_AGENT_TURNS, included_quantity=100, hard_limit=True, overage_block_size=1
    )
    await world.set_plan(principal_pb2.TIER_ENTERPRISE, [seconds, turns])
    agent = await world.agent("Chatty")
    conversation = await world.conversation([agent], speak_answers=True)
    posted = await world.post(conversation.id, "Tell me a long story, please.")
    events = await world.round_events(conversation.id, "0-0", posted.message_id)
    (completed,) = [event.turn_completed for event in events if event.HasField("turn_completed")]
    assert completed.outcome == pb.TURN_OUTCOME_COMPLETED
    assert completed.text.count(".") >= 2, "an answer of several sentences"
    refusals = [event.error for event in events if event.HasField("error")]
    assert [refusal.detail.reason for refusal in refusals] == ["VOICE_QUOTA_EXCEEDED"]
    assert "its text goes on" in refusals[0].detail.message
    (spoken,) = [event.speech_completed for event in events if event.HasField("speech_completed")]
    assert spoken.audio_seconds <= 3
    assert await world.open_holds() == []


async def test_speech_a_provider_cuts_fails_the_call_and_bills_nothing(world: World) -> None:
    started = time.time()
    agent = await world.agent("Cut")
    world.book("cut=2", times=1, model=SPEECH_MODEL)
    client = sdk(world)
    try:
        async with client.audio.speech.with_streaming_response.create(
            model=agent.id, voice="alloy", input=QUESTION * 3, response_format="wav"
        ) as response:
            # The SDK's own HTTP client reports the body cut short of what its header promised.
            with pytest.raises(httpx2.RemoteProtocolError):
                await response.read()
    finally:
        await client.close()
    await asyncio.sleep(1)
    assert await voice_seconds(world, started) == 0
    assert await world.open_holds() == []


async def test_a_websocket_round_with_voice_in_and_out(world: World) -> None:
    """The client speaks over the WebSocket (binary frames) and hears every agent: its audio is
    the stored user message, each answer arrives as text and as audio, and metering holds exactly
    the seconds heard and made."""
    started = time.time()
    agents = [await world.agent("Ada"), await world.agent("Bo")]
    conversation = await world.conversation(agents)
    wav = audio_codec.wav_bytes(audio_codec.synthesize(QUESTION, voice="alloy"))
    url = world.front_url.replace("http://", "ws://") + f"/v1/ws?access_token={world.edge_token}"
    message_id = str(uuid.uuid4())
    events: list[dict[str, Any]] = []
    async with websockets.connect(url, max_size=None) as ws:
        start = {"action": "utterance_start", "conversation_id": conversation.id, "format": "wav"}
        await ws.send(json.dumps({**start, "message_id": message_id}))
        assert json.loads(await ws.recv())["type"] == "ack"
        for offset in range(0, len(wav), 16_384):
            await ws.send(wav[offset : offset + 16_384])
        await ws.send(json.dumps({"action": "utterance_end", "conversation_id": conversation.id}))
        async with asyncio.timeout(30):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "error":
                    pytest.fail(f"the edge refused: {frame}")
                if frame["type"] != "event":
                    continue
                events.append(frame["event"])
                if frame["kind"] == "round_completed":
                    break
    heard = next(event["utterance_transcribed"] for event in events if "utterance_transcribed" in event)
    assert (heard["message_id"], heard["text"]) == (message_id, QUESTION)
    stored = await world.messages(conversation.id)
    assert (stored[0].id, stored[0].text) == (message_id, QUESTION)
    answers = [event["turn_completed"] for event in events if "turn_completed" in event]
    assert len(answers) == 2
    made = 0.0
    for answer in answers:
        audio: dict[int, bytes] = {}
        for event in events:
            speech = event.get("speech_audio")
            if speech and speech["turn_id"] == answer["turn_id"]:
                piece = base64.b64decode(speech["chunk"]["data"])
                audio[speech["sentence"]] = audio.get(speech["sentence"], b"") + piece
        said = [audio_codec.transcribe(audio_codec.read_wav(audio[index])[0]) for index in sorted(audio)]
        assert " ".join(said) == " ".join(answer["text"].split())
        made += sum(audio_codec.seconds(audio_codec.read_wav(audio[index])[0]) for index in audio)
    total = heard["audio_seconds"] + made
    assert await voice_seconds(world, started, total - 0.01) == pytest.approx(total)
    async with httpx.AsyncClient(base_url=world.front_url) as http:
        usage = await http.get("/v1/usage", headers={"authorization": f"Bearer {world.edge_token}"})
    assert usage.json()["totals"]["voiceMinutes"] == pytest.approx(total / 60)
    assert await world.open_holds() == []
