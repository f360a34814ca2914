"""OrchestratorService: the RPCs the edge's WebSocket, SSE and REST endpoints talk to.

Every stream reads the conversation's event log (event_log.py), never the round itself, so a
client sees the same events in the same order whichever process it reached and whichever one
drives the round. A client's action that is refused (a message under REJECT while a round runs, a
bid for a stranger) becomes an ErrorEvent of the log, with its id and time like any event, naming
the action in its detail; the stream stays open.

Each action of a Converse stream runs in the trace its `trace_context` names (the edge starts one
per client action), as a span of its own; a round it starts is spawned inside that span, so the
round's calls (agents, metering, conversation) are part of the action's trace, not of the stream's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
from macp.common.v1 import agent_settings_pb2
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from macp.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from opentelemetry.trace import SpanKind
from redis.exceptions import RedisError

from services.orchestrator.completions import complete
from services.orchestrator.driver import Driver
from services.orchestrator.event_log import EventLog
from services.orchestrator.event_shapes import error_event
from services.orchestrator.utterances import hear
from services.orchestrator.voice import Voice, VoiceCall
from services.runtime import tracing
from services.runtime.context import RpcContext
from services.runtime.errors import DomainError, InvalidArgument, Unavailable, relayed
from services.runtime.principal import current_caller

log = logging.getLogger("macp.orchestrator.servicer")


@contextlib.contextmanager
def relaying(what: str) -> Iterator[None]:
    """Calls made for the caller: a callee's refusal is this RPC's (runtime/errors.py `relayed`)."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise relayed(exc, what) from None


# Events buffered per Converse stream before the reader waits: a slow client slows only itself.
STREAM_BUFFER = 1024
CONVERSE = pb.DESCRIPTOR.services_by_name["OrchestratorService"].methods_by_name["Converse"].full_name


def _refusal(exc: BaseException) -> pb.ConversationEvent:
    if isinstance(exc, DomainError):
        return pb.ConversationEvent(error=error_event(exc.code, type(exc).__name__.upper(), str(exc)))
    if isinstance(exc, grpc.aio.AioRpcError):
        return pb.ConversationEvent(error=error_event(exc.code(), "CALL_FAILED", exc.details() or ""))
    if isinstance(exc, RedisError):
        return pb.ConversationEvent(
            error=error_event(
                grpc.StatusCode.UNAVAILABLE,
                "STORE_UNAVAILABLE",
                f"the orchestrator's Redis failed ({exc}); send the action again",
            )
        )
    return pb.ConversationEvent(error=error_event(grpc.StatusCode.INTERNAL, "INTERNAL", "the action failed"))


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):
    def __init__(self, driver: Driver, events: EventLog, voice: Voice) -> None:
        self._driver = driver
        self._events = events
        self._voice = voice

    async def PostMessage(
        self, request: pb.PostMessageRequest, context: RpcContext
    ) -> pb.PostMessageResponse:
        with relaying("storing the message"):
            accepted = await self._driver.post(request.conversation_id, request.message)
        return accepted.response()

    async def StreamEvents(
        self, request: pb.StreamEventsRequest, context: RpcContext
    ) -> AsyncIterator[pb.StreamEventsResponse]:
        with relaying("reading the conversation"):
            await self._driver.conversation(request.conversation_id)
        if request.until_now:
            if not request.after_event_id:
                raise InvalidArgument("after_event_id: required with until_now (where the events start)")
            events = self._events.so_far(request.conversation_id, request.after_event_id)
        else:
            events = self._events.follow(request.conversation_id, request.after_event_id)
        async for event in events:
            yield pb.StreamEventsResponse(event=event)

    async def Converse(
        self, request_iterator: AsyncIterator[pb.ConverseRequest], context: RpcContext
    ) -> AsyncIterator[pb.ConverseResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        conversation_id = first.conversation_id
        with relaying("reading the conversation"):
            await self._driver.conversation(conversation_id)
        after = first.join.after_event_id if first.HasField("join") else ""
        # Start reading before acting, so the events of this client's own first action are seen.
        start = after or await self._events.last_event_id(conversation_id)
        out: asyncio.Queue[pb.ConversationEvent | BaseException] = asyncio.Queue(STREAM_BUFFER)

        async def follow() -> None:
            try:
                async for event in self._events.follow(conversation_id, start):
                    await out.put(event)
            except Exception as exc:
                await out.put(exc)

        async def act() -> None:
            if not first.HasField("join"):
                await self._act(conversation_id, first, out)
            async for request in request_iterator:
                await self._act(conversation_id, request, out)

        tasks = [asyncio.create_task(follow()), asyncio.create_task(act())]
        try:
            while True:
                item = await out.get()
                if isinstance(item, BaseException):
                    raise item
                yield pb.ConverseResponse(event=item)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _act(
        self,
        conversation_id: str,
        request: pb.ConverseRequest,
        out: asyncio.Queue[pb.ConversationEvent | BaseException],
    ) -> None:
        action = request.WhichOneof("event") or "join"
        with tracing.span(
            f"{CONVERSE} {action}",
            kind=SpanKind.SERVER,
            headers=request.trace_context,
            attributes={"macp.conversation_id": conversation_id, "macp.converse.action": action},
        ):
            await self._act_now(conversation_id, request, out)

    async def _act_now(
        self,
        conversation_id: str,
        request: pb.ConverseRequest,
        out: asyncio.Queue[pb.ConversationEvent | BaseException],
    ) -> None:
        try:
            if request.conversation_id != conversation_id:
                raise InvalidArgument(
                    f"conversation_id: this stream is on conversation {conversation_id}; open another "
                    "stream for another conversation"
                )
            match request.WhichOneof("event"):
                case "user_message":
                    await self._driver.post(conversation_id, request.user_message)
                case "utterance":
                    await hear(self._driver, self._voice, self._events, conversation_id, request.utterance)
                case "bid":
                    await self._driver.bid(conversation_id, request.bid)
                case "cancel":
                    await self._driver.cancel(conversation_id, request.cancel.turn_id, request.cancel.reason)
                case _:
                    pass  # a second join changes nothing: the stream already follows the log
        except (DomainError, grpc.aio.AioRpcError) as exc:
            await self._refuse(conversation_id, request, _refusal(exc), out)
        except Exception as exc:
            # Never a silent drop: the client hears that its action failed (and may send it again;
            # a message is stored once by its id) while the stream keeps following.
            log.exception(
                "a %s action on conversation %s failed", request.WhichOneof("event"), conversation_id
            )
            await self._refuse(conversation_id, request, _refusal(exc), out)

    async def _refuse(
        self,
        conversation_id: str,
        request: pb.ConverseRequest,
        refusal: pb.ConversationEvent,
        out: asyncio.Queue[pb.ConversationEvent | BaseException],
    ) -> None:
        """Say an action failed as an event of the conversation's log, which this stream follows:
        like every event a client receives it has an id, so a client that reconnects after it
        still learns of it. When even the log cannot take it (Redis is away), the stream ends
        UNAVAILABLE instead: the client reconnects from its last event and acts again."""
        detail = refusal.error.detail
        detail.metadata["action"] = request.WhichOneof("event") or "join"
        if request.HasField("user_message"):
            detail.metadata["message_id"] = request.user_message.message_id
        if request.HasField("utterance"):
            detail.metadata["message_id"] = request.utterance.message_id
        try:
            await self._events.append(conversation_id, refusal)
        except Exception as exc:
            log.warning("could not log a refusal on conversation %s: %s", conversation_id, exc)
            await out.put(
                Unavailable(f"{detail.reason}: {detail.message}; the conversation's log is unreachable")
            )

    async def Complete(
        self, request: pb.CompleteRequest, context: RpcContext
    ) -> AsyncIterator[pb.CompleteResponse]:
        downstream = self._driver.downstream
        with relaying("reading the agent"):
            agent = await downstream.get_agent(request.agent_id)
        overrides = agent_settings_pb2.GenerationSettings()
        if request.HasField("max_tokens"):
            overrides.max_tokens = request.max_tokens
        if request.HasField("temperature"):
            overrides.temperature = request.temperature
        async for response in complete(
            self._driver.rounds.turns,
            current_caller(),
            agent,
            request,
            overrides,
            turn_id=request.turn_id or str(uuid.uuid4()),
        ):
            yield response

    async def Speak(self, request: pb.SpeakRequest, context: RpcContext) -> AsyncIterator[pb.SpeakResponse]:
        with relaying("reading the agent"):
            agent = await self._driver.downstream.get_agent(request.agent_id)
        call = VoiceCall(current_caller(), agent, request.request_id)
        async for response in self._voice.speak(call, request):
            yield response

    async def Transcribe(
        self, request: pb.TranscribeRequest, context: RpcContext
    ) -> AsyncIterator[pb.TranscribeResponse]:
        with relaying("reading the agent"):
            agent = await self._driver.downstream.get_agent(request.agent_id)
        call = VoiceCall(current_caller(), agent, request.request_id)
        async for response in self._voice.transcribe(call, request):
            yield response
