"""A stand-in for MACP's own orchestrator (and the token service's signing side), served in-process
on a free port, so the edge's WebSocket, SSE and chat-completions routes are tested over real
sockets while the real orchestrator is being built. No infrastructure part is faked: the edge's
Redis (revocations, rate limits) is the session's real one.

The fake keeps a per-conversation event log with ids `<n>-0` (Redis stream ids, like the real
log), replays it after an event id (OUT_OF_RANGE for an id it does not hold, as the real log does
for one no longer retained), and answers each user message with a scripted round: MessageAccepted,
TurnStarted, one TokenDelta per word of "echo: <text>", TurnCompleted, RoundCompleted. A message
text `flood <n>` appends n large deltas at once (the slow-client tests), `fatal` ends the round with
a fatal ErrorEvent, `fail` aborts the Converse stream.
An utterance is heard with the local provider's codec (services/provider_server/audio_codec.py):
UtteranceTranscribed with what it decodes to, then the round of that text as a message's (an
error naming `audio` instead when nothing was heard). A message or an utterance that asks for its
answers spoken gets them spoken too: the answer in the codec's speech, as a WAV in 100 ms
SpeechAudio chunks before the turn completes, then SpeechCompleted.
It validates requests with protovalidate, as the real service's interceptor does, so a bad request
the edge let through would abort the stream here too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2_grpc
from macp.common.v1 import audio_pb2, error_pb2, usage_pb2
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from macp.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from macp.token.v1 import token_service_pb2 as token_pb
from macp.token.v1 import token_service_pb2_grpc as token_grpc

from services.edge.events import preceding_event_id
from services.provider_server import audio_codec
from services.runtime.auth import jwt
from services.runtime.auth.settings import EDGE_AUDIENCE
from services.runtime.interceptors import violations_message
from services.runtime.wav import pcm_seconds, read_wav

AGENT_ID = "6f1f7c1e-4a39-4d6b-9d8e-2f0a3f6f0001"
# Complete for this agent fails as a quota refusal would; for UNKNOWN_AGENT_ID, NOT_FOUND.
QUOTA_AGENT_ID = "6f1f7c1e-4a39-4d6b-9d8e-2f0a3f6f0002"
UNKNOWN_AGENT_ID = "6f1f7c1e-4a39-4d6b-9d8e-2f0a3f6f0003"
KID = "fake-orchestrator-key"
ISSUER = "http://fake-issuer.test"


def _payload(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified (the fake only reads what the edge sent it)."""
    segment = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return claims


class Signer:
    """Signs MACP access tokens with a key the fake token service publishes."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def token(self, audience: str = EDGE_AUDIENCE, *, lifetime: float = 600, **members: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "user-1",
            "aud": audience,
            "exp": now + lifetime,
            "iat": now,
            "nbf": now,
            "jti": str(uuid.uuid4()),
            "client_id": "web-app",
            "client_class": "consumer",
            "scope": "conversations:read conversations:write",
            "tenant_id": "acme",
            "tier": "pro",
            "user_id": "user-1",
            **members,
        }
        return jwt.sign(claims, private_key=self.key, kid=KID)

    def jwk(self) -> token_pb.Jwk:
        return token_pb.Jwk(**jwt.jwk_from_public_key(self.key.public_key(), KID))


class FakeTokenService(token_grpc.TokenServiceServicer):
    """What the edge asks of the token service here: keys, its own client, exchanges."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer

    async def GetJwks(self, request: token_pb.GetJwksRequest, context: Any) -> token_pb.GetJwksResponse:
        return token_pb.GetJwksResponse(keys=[self._signer.jwk()])

    async def RegisterClient(
        self, request: token_pb.RegisterClientRequest, context: Any
    ) -> token_pb.RegisterClientResponse:
        return token_pb.RegisterClientResponse(client_id="edge", client_secret="edge-secret")

    async def ExchangeToken(
        self, request: token_pb.ExchangeTokenRequest, context: Any
    ) -> token_pb.ExchangeTokenResponse:
        subject = _payload(request.subject_token)
        kept = {k: v for k, v in subject.items() if k not in ("aud", "exp", "iat", "nbf", "jti", "iss")}
        access = self._signer.token(request.audience[0], **kept)
        return token_pb.ExchangeTokenResponse(access_token=access, token_type="Bearer", expires_in=600)


@dataclass
class ConversationLog:
    events: list[pb.ConversationEvent] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    accepted: dict[str, pb.PostMessageResponse] = field(default_factory=dict)


class FakeOrchestrator(pb_grpc.OrchestratorServiceServicer):
    def __init__(self, *, delta_pause: float = 0.0) -> None:
        self.logs: dict[str, ConversationLog] = {}
        # Every request received, and the audience of the token each call carried.
        self.requests: list[Message] = []
        self.audiences: list[str] = []
        self.converse_streams = 0
        self.joined = 0  # Converse streams that reached the log (live events from then on)
        self.open_streams = 0
        self.open_by_conversation: Counter[str] = Counter()
        self.following_events: Counter[str] = Counter()  # open StreamEvents calls per conversation
        self.delta_pause = delta_pause
        # The speech and transcription calls that reached the orchestrator (past the edge's checks).
        self.spoken: list[pb.SpeakRequest] = []
        self.heard: list[pb.TranscribeRequest] = []
        self.fail_next: tuple[grpc.StatusCode, str] | None = None
        self._rounds: set[asyncio.Task[None]] = set()

    # The log.

    def log(self, conversation_id: str) -> ConversationLog:
        return self.logs.setdefault(conversation_id, ConversationLog())

    async def append(self, conversation_id: str, **payload: Any) -> pb.ConversationEvent:
        log = self.log(conversation_id)
        event = pb.ConversationEvent(
            event_id=f"{len(log.events) + 1}-0", conversation_id=conversation_id, **payload
        )
        event.time.GetCurrentTime()
        async with log.changed:
            log.events.append(event)
            log.changed.notify_all()
        return event

    def follow(self, conversation_id: str, after: str) -> AsyncIterator[pb.ConversationEvent]:
        """The log's events after `after` (empty: from now on), then live ones, until cancelled;
        LookupError at once for an id the log does not hold (nor holds the one right after)."""
        log = self.log(conversation_id)
        position = len(log.events)
        if after:
            ids = [event.event_id for event in log.events]
            preceding = [preceding_event_id(event_id) for event_id in ids]
            if after in ids:
                position = ids.index(after) + 1
            elif after in preceding:
                position = preceding.index(after)
            else:
                raise LookupError(after)
        return self._events_from(log, position)

    @staticmethod
    async def _events_from(log: ConversationLog, position: int) -> AsyncIterator[pb.ConversationEvent]:
        while True:
            async with log.changed:
                while len(log.events) <= position:
                    await log.changed.wait()
                pending = log.events[position:]
            position += len(pending)
            for event in pending:
                yield event

    async def round(self, conversation_id: str, message: pb.UserMessage) -> pb.PostMessageResponse:
        """Accepts a user message (once per id) and runs its scripted round in the background."""
        log = self.log(conversation_id)
        previous = log.accepted.get(message.message_id)
        if previous is not None:
            duplicate = pb.PostMessageResponse()
            duplicate.CopyFrom(previous)
            duplicate.duplicate = True
            return duplicate
        sequence = len(log.accepted) + 1
        accepted = await self.append(
            conversation_id,
            message_accepted=pb.MessageAccepted(message_id=message.message_id, sequence=sequence),
        )
        reply = pb.PostMessageResponse(
            message_id=message.message_id, sequence=sequence, event_id=accepted.event_id
        )
        log.accepted[message.message_id] = reply
        task = asyncio.get_running_loop().create_task(self._answer(conversation_id, message))
        self._rounds.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._rounds.discard)
        return reply

    async def _hear(self, conversation_id: str, utterance: pb.Utterance) -> None:
        """An utterance: what the codec hears in it, then its round as a message's."""
        if utterance.format == audio_pb2.AUDIO_FORMAT_WAV:
            pcm, rate = audio_codec.read_wav(utterance.audio, field="audio")
        else:
            pcm, rate = utterance.audio, utterance.sample_rate
        text = audio_codec.transcribe(pcm, rate)
        heard = pb.UtteranceTranscribed(
            message_id=utterance.message_id, text=text, audio_seconds=audio_codec.seconds(pcm, rate)
        )
        await self.append(conversation_id, utterance_transcribed=heard)
        if not text:  # nothing heard: refused naming the audio, and nothing posted (docs/voice.md)
            detail = error_pb2.ErrorDetail(
                reason="INVALID_ARGUMENT", message="audio: nothing was heard in the utterance"
            )
            await self.append(conversation_id, error=pb.ErrorEvent(code=3, detail=detail))
            return
        message = pb.UserMessage(
            message_id=utterance.message_id,
            text=text,
            mention_agent_ids=utterance.mention_agent_ids,
            speak_answers=utterance.speak_answers,
        )
        await self.round(conversation_id, message)

    async def _speak(self, conversation_id: str, turn: str, answer: str) -> None:
        """The answer spoken as one sentence: a WAV in 100 ms chunks, then SpeechCompleted."""
        pcm = audio_codec.synthesize(answer, voice="alloy")
        audio = audio_codec.wav_bytes(pcm)
        step = audio_codec.SAMPLE_RATE // 10 * audio_codec.SAMPLE_WIDTH
        for index, start in enumerate(range(0, len(audio), step)):
            chunk = audio_pb2.AudioChunk(data=audio[start : start + step], index=index)
            speech = pb.SpeechAudio(
                turn_id=turn, agent_id=AGENT_ID, sentence=0, chunk=chunk, format=audio_pb2.AUDIO_FORMAT_WAV
            )
            await self.append(conversation_id, speech_audio=speech)
        done = pb.SpeechCompleted(
            turn_id=turn, agent_id=AGENT_ID, sentences=1, audio_seconds=audio_codec.seconds(pcm)
        )
        await self.append(conversation_id, speech_completed=done)

    async def _answer(self, conversation_id: str, message: pb.UserMessage) -> None:
        turn = str(uuid.uuid4())
        words = message.text.split()
        if message.text == "fatal":
            error = fatal_error(13, "the round failed on purpose")
            error.turn_id = turn
            await self.append(conversation_id, error=error)
            return
        if len(words) == 2 and words[0] == "flood" and words[1].isdigit():
            for index in range(int(words[1])):
                delta = pb.TokenDelta(turn_id=turn, agent_id=AGENT_ID, text="x" * 4000, index=index)
                await self.append(conversation_id, token_delta=delta)
            return
        await self.append(
            conversation_id,
            turn_started=pb.TurnStarted(
                turn_id=turn, agent_id=AGENT_ID, trigger_message_id=message.message_id, turn_index=1
            ),
        )
        answer = ["echo:", *words]
        for index, word in enumerate(answer):
            if self.delta_pause:
                await asyncio.sleep(self.delta_pause)
            text = word if index == 0 else f" {word}"
            delta = pb.TokenDelta(turn_id=turn, agent_id=AGENT_ID, text=text, index=index)
            await self.append(conversation_id, token_delta=delta)
        if message.speak_answers:
            await self._speak(conversation_id, turn, " ".join(answer))
        await self.append(
            conversation_id,
            turn_completed=pb.TurnCompleted(
                turn_id=turn, agent_id=AGENT_ID, outcome=pb.TURN_OUTCOME_COMPLETED, text=" ".join(answer)
            ),
        )
        await self.append(
            conversation_id,
            round_completed=pb.RoundCompleted(
                trigger_message_id=message.message_id, turn_count=1, reason=pb.ROUND_END_REASON_COMPLETED
            ),
        )

    # Shared rules.

    async def _begin(self, request: Message, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.requests.append(request)
        problem = violations_message(request)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if self.fail_next is not None:
            code, text = self.fail_next
            self.fail_next = None
            await context.abort(code, text)

    def _record_audience(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                token = value if isinstance(value, str) else value.decode()
                self.audiences.append(str(_payload(token.removeprefix("Bearer "))["aud"]))

    # The RPCs.

    async def Converse(
        self,
        request_iterator: AsyncIterator[pb.ConverseRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ConverseResponse]:
        self._record_audience(context)
        self.converse_streams += 1
        self.open_streams += 1
        try:
            first = await anext(aiter(request_iterator))
            await self._begin(first, context)
            after = first.join.after_event_id if first.WhichOneof("event") == "join" else ""
            conversation_id = first.conversation_id
            try:
                events = self.follow(conversation_id, after)
            except LookupError:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"event {after} is no longer retained")
            self.joined += 1
            self.open_by_conversation[conversation_id] += 1
            pending: asyncio.Future[pb.ConversationEvent] = asyncio.ensure_future(anext(events))
            reader: asyncio.Future[tuple[grpc.StatusCode, str] | None] | None = asyncio.ensure_future(
                self._read_client(first, request_iterator, context)
            )
            try:
                while True:
                    waiting: set[asyncio.Future[Any]] = {pending} if reader is None else {pending, reader}
                    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if reader is not None and reader in done:
                        failure, reader = reader.result(), None  # None: the client is done writing
                        if failure is not None:
                            await context.abort(*failure)
                    if pending in done:
                        yield pb.ConverseResponse(event=pending.result())
                        pending = asyncio.ensure_future(anext(events))
            finally:
                self.open_by_conversation[conversation_id] -= 1
                pending.cancel()
                if reader is not None:
                    reader.cancel()
        finally:
            self.open_streams -= 1

    async def _read_client(
        self,
        first: pb.ConverseRequest,
        requests: AsyncIterator[pb.ConverseRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> tuple[grpc.StatusCode, str] | None:
        """Handles every client event; a failure to abort the stream with, or None at its end."""
        request: pb.ConverseRequest | None = first
        while request is not None:
            if request is not first:
                self.requests.append(request)
                problem = violations_message(request)
                if problem is not None:
                    return grpc.StatusCode.INVALID_ARGUMENT, problem
            kind = request.WhichOneof("event")
            if kind == "user_message":
                if request.user_message.text == "fail":
                    return grpc.StatusCode.INTERNAL, "the fake orchestrator failed on purpose"
                await self.round(request.conversation_id, request.user_message)
            elif kind == "utterance":
                await self._hear(request.conversation_id, request.utterance)
            elif kind == "bid":
                bid = pb.Bid(
                    agent_id=request.bid.agent_id, score=request.bid.score, source=pb.BID_SOURCE_CLIENT
                )
                results = pb.BidResults(turn_id=request.bid.turn_id, bids=[bid], winner_agent_id=bid.agent_id)
                await self.append(request.conversation_id, bid_results=results)
            elif kind == "cancel":
                ended = pb.RoundCompleted(reason=pb.ROUND_END_REASON_CANCELLED)
                await self.append(request.conversation_id, round_completed=ended)
            request = await anext(aiter(requests), None)
        return None

    async def PostMessage(
        self, request: pb.PostMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PostMessageResponse:
        self._record_audience(context)
        await self._begin(request, context)
        return await self.round(request.conversation_id, request.message)

    async def StreamEvents(
        self, request: pb.StreamEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.StreamEventsResponse]:
        self._record_audience(context)
        await self._begin(request, context)
        try:
            events = self.follow(request.conversation_id, request.after_event_id)
        except LookupError:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE, f"event {request.after_event_id} is no longer retained"
            )
        self.following_events[request.conversation_id] += 1
        try:
            async for event in events:
                yield pb.StreamEventsResponse(event=event)
        finally:
            self.following_events[request.conversation_id] -= 1

    async def Complete(
        self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.CompleteResponse]:
        self._record_audience(context)
        await self._begin(request, context)
        if request.agent_id == QUOTA_AGENT_ID:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "quota exceeded: agent_turns 100/100 this month"
            )
        if request.agent_id == UNKNOWN_AGENT_ID:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"agent {request.agent_id} not found")
        last = request.messages[-1].text
        words = ["echo:", *last.split()]
        if request.HasField("max_tokens"):
            words = words[: request.max_tokens]
        turn = request.turn_id
        for index, word in enumerate(words):
            text = word if index == 0 else f" {word}"
            yield pb.CompleteResponse(
                delta=pb.TokenDelta(turn_id=turn, agent_id=request.agent_id, text=text, index=index)
            )
        prompt = sum(len(message.text.split()) for message in request.messages)
        truncated = request.HasField("max_tokens") and len(last.split()) + 1 > request.max_tokens
        done = pb.CompletionDone(
            outcome=pb.TURN_OUTCOME_TRUNCATED if truncated else pb.TURN_OUTCOME_COMPLETED,
            text=" ".join(words),
            usage=usage_pb2.UsageDimensions(input_tokens=prompt, output_tokens=len(words), provider="local"),
        )
        yield pb.CompleteResponse(done=done)

    async def Speak(
        self, request: pb.SpeakRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SpeakResponse]:
        """Real speech of the local provider's codec, WAV or PCM as asked, 100 ms a chunk; `cut`
        in the text fails the stream after its first chunk, as a provider cutting its audio does."""
        self._record_audience(context)
        await self._begin(request, context)
        await self._refuse_agent(request.agent_id, context)
        self.spoken.append(request)
        speed = request.voice.speed if request.voice.HasField("speed") else 1.0
        pcm = audio_codec.synthesize(request.text, voice=request.voice.voice or "alloy", speed=speed)
        wav = request.voice.format != audio_pb2.AUDIO_FORMAT_PCM
        audio = audio_codec.wav_bytes(pcm) if wav else pcm
        step = audio_codec.SAMPLE_RATE // 10 * audio_codec.SAMPLE_WIDTH
        for index, start in enumerate(range(0, len(audio), step)):
            yield pb.SpeakResponse(audio=audio_pb2.AudioChunk(data=audio[start : start + step], index=index))
            if "cut" in request.text:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the provider cut its audio stream")
        usage = usage_pb2.UsageDimensions(
            audio_seconds=audio_codec.seconds(pcm), characters=len(request.text), provider="local"
        )
        yield pb.SpeakResponse(
            completion=audio_pb2.SpeechCompletion(
                format=audio_pb2.AUDIO_FORMAT_WAV if wav else audio_pb2.AUDIO_FORMAT_PCM,
                sample_rate=audio_codec.SAMPLE_RATE,
                usage=usage,
            )
        )

    async def Transcribe(
        self, request: pb.TranscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.TranscribeResponse]:
        """The local provider's codec decodes the audio; one delta per word."""
        self._record_audience(context)
        await self._begin(request, context)
        await self._refuse_agent(request.agent_id, context)
        self.heard.append(request)
        header, pcm = read_wav(request.audio)
        text = audio_codec.transcribe(pcm, header.sample_rate)
        for index, word in enumerate(text.split(" ")):
            piece = word if index == 0 else f" {word}"
            yield pb.TranscribeResponse(delta=audio_pb2.TranscriptDelta(text=piece, index=index))
        usage = usage_pb2.UsageDimensions(audio_seconds=pcm_seconds(len(pcm), header.sample_rate))
        yield pb.TranscribeResponse(completion=audio_pb2.TranscriptionCompletion(text=text, usage=usage))

    async def _refuse_agent(self, agent_id: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if agent_id == QUOTA_AGENT_ID:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "quota exceeded: voice_seconds 300/300 this month"
            )
        if agent_id == UNKNOWN_AGENT_ID:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"agent {agent_id} not found")


def fatal_error(code: int, message: str) -> pb.ErrorEvent:
    return pb.ErrorEvent(code=code, detail=error_pb2.ErrorDetail(reason="TEST", message=message), fatal=True)


@dataclass(frozen=True)
class Served:
    address: str
    orchestrator: FakeOrchestrator
    signer: Signer


@asynccontextmanager
async def serving_fakes(orchestrator: FakeOrchestrator | None = None) -> AsyncIterator[Served]:
    """The fake orchestrator and token service on one free loopback port (the edge's mesh address)."""
    signer = Signer()
    fake = orchestrator or FakeOrchestrator()
    server = grpc.aio.server()
    pb_grpc.add_OrchestratorServiceServicer_to_server(fake, server)
    # The edge is ready once what it needs answers SERVING (services/edge/readiness.py): with the
    # mesh address pointing here, every service it asks about is this server.
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    token_grpc.add_TokenServiceServicer_to_server(FakeTokenService(signer), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Served(f"127.0.0.1:{port}", fake, signer)
    finally:
        await server.stop(0.5)
