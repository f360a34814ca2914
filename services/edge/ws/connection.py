"""An accepted `/v1/ws` connection (docs/websocket.md): one connection, any number of conversations.

The handshake (services/edge/ws/handshake.py) decides who connects; from then on a connection is in
one of the states of services/edge/ws/state.py. It is closed with 4401 when its token expires, or
is revoked (services/edge/open_streams.py). Client frames are JSON routed by `action`
(services/edge/ws/frames.py); each one counts against the edge's rate limits, except the audio of
an open utterance, whose pace services/edge/ws/utterances.py bounds instead. Binary frames are
audio: they are taken while an utterance is open.

Why the state is lazy and nothing waits: the target is 5,000 idle connections at ≤ 16 KiB each.
The edge serves the protocol itself (services/edge/ws/link.py, plugged into uvicorn), so a frame
arriving is a callback, not a coroutine waiting on `receive()`. A connection that has subscribed to
nothing holds its caller and one timer (idle timeout or token expiry, whichever is first): no task,
no gRPC stream. Frames are handled in order by a task that lives only while there are frames to
handle; each subscription adds one Converse stream and its reader task (services/edge/ws/streams.py).

Why sending never waits: replies and the events of every subscription are written to the link at
once, in the order they happen; readers never wait on the client. While the client does not read,
the link holds the frames; more than MACP_EDGE_WS_SEND_QUEUE of them means it is too slow to follow
its conversations: it is closed with 1013 after what is already waiting (and resumes with
`last_event_id` when it is ready), so it never holds up the orchestrator's stream or anyone else.

Why a trace per action, not per connection: a connection lives for hours and carries many turns.
With tracing on, each client frame but `ping` is a SERVER span of its own, the root of a new trace
(linked to the handshake's `traceparent`, if the client sent one), current while the frame is
handled, so the calls the edge makes for it carry it; on a Converse stream that is already open the
action itself carries it (`ConverseRequest.trace_context`), since the stream's metadata was sent
once, at subscribe. The `ack` names the trace (`traceparent`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import deque

import grpc
from opentelemetry.trace import SpanContext, SpanKind

from services.edge.context import EdgeContext
from services.edge.rate_limits import refusal, retry_after
from services.edge.ws.close import CloseCode, close_reason
from services.edge.ws.frames import (
    VOICE_ACTIONS,
    ClientFrame,
    FrameError,
    error_frame,
    parse_frame,
    reply_frame,
    rpc_error_fields,
)
from services.edge.ws.link import WebSocketLink
from services.edge.ws.state import ConnectionState, transition
from services.edge.ws.streams import Subscription
from services.edge.ws.utterances import OpenUtterance, UtteranceRefused, Utterances
from services.runtime import tracing
from services.runtime.context import new_request_id, request_id_var, reset_quietly
from services.runtime.errors import DomainError
from services.runtime.principal import Caller, caller_var
from services.runtime.registry import EDGE

log = logging.getLogger("macp.edge.websocket")


class Connection:
    """An accepted, authenticated connection (see the module docstring for what it holds when).

    Event-driven: the link calls `on_text` for each frame; frames are handled in order by a task
    that exists only while there are frames to handle. Everything sent goes out through the link at
    once (`send_text` does not wait), so replies and events keep the order they happened in."""

    __slots__ = (
        "_caller",
        "_close_code",
        "_edge",
        "_expires_at",
        "_handshake",
        "_idle_since",
        "_inbox",
        "_link",
        "_started",
        "_state",
        "_subscriptions",
        "_timer",
        "_voice",
        "_worker",
    )

    def __init__(
        self, edge: EdgeContext, caller: Caller, link: WebSocketLink, handshake: SpanContext | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        self._handshake = handshake
        self._edge = edge
        self._caller = caller
        self._link = link
        self._state = ConnectionState.IDLE
        self._started = loop.time()
        # Where the idle clock starts: the last frame, or the moment the last subscription ended.
        self._idle_since = self._started
        # The token's expiry on the loop's clock: the connection closes (4401) when it passes.
        self._expires_at = self._started + (caller.principal.expire_time.ToNanoseconds() / 1e9 - time.time())
        self._subscriptions: dict[str, Subscription] | None = None
        # Frames waiting to be handled, with when each arrived (an utterance's pace is measured
        # from arrivals, not from when the frame's turn came): text, binary audio, or the size of
        # binary audio dropped because too much of it was waiting.
        self._inbox: deque[tuple[float, str | bytes | int]] | None = None
        self._voice: Utterances | None = None
        self._worker: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Why we closed (CLOSING and CLOSED only): what the log says when the link is gone.
        self._close_code: CloseCode | None = None

    @property
    def state(self) -> ConnectionState:
        return self._state

    def start(self) -> None:
        if not self._state.open:  # the link went away before the accept completed
            return
        self._edge.open_streams.watch(self._caller.principal.token_id, self)
        self._arm()

    def token_revoked(self) -> None:
        """The token was revoked while connected (services/edge/open_streams.py): as when it expires."""
        self._close(CloseCode.UNAUTHENTICATED, "the token was revoked; reconnect with a valid one")

    def _move(self, to: ConnectionState) -> None:
        self._state = transition(self._state, to)

    def _track_subscriptions(self) -> None:
        """IDLE while following nothing, FOLLOWING otherwise (called after every change of the
        subscriptions). Going idle starts the idle clock and brings the timer forward to it."""
        if not self._state.open:
            return
        following = bool(self._subscriptions)
        if following and self._state is ConnectionState.IDLE:
            self._move(ConnectionState.FOLLOWING)  # the timer, if early, sets itself again
        elif not following and self._state is ConnectionState.FOLLOWING:
            self._move(ConnectionState.IDLE)
            self._idle_since = asyncio.get_running_loop().time()
            self._cancel_timer()
            self._arm()

    # Deadlines: one timer, at the idle timeout (IDLE) or the token's expiry.

    def _deadline(self) -> float:
        idle = math.inf
        if self._state is ConnectionState.IDLE:
            idle = self._idle_since + self._edge.settings.websocket.idle_timeout_seconds
        return min(idle, self._expires_at)

    def _arm(self) -> None:
        if not self._state.open:
            return
        self._timer = asyncio.get_running_loop().call_at(self._deadline(), self._on_deadline)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_deadline(self) -> None:
        # A frame or a subscription since the timer was set moves the deadline: set it again.
        self._timer = None
        if asyncio.get_running_loop().time() < self._deadline():
            self._arm()
            return
        if asyncio.get_running_loop().time() >= self._expires_at:
            self._close(CloseCode.UNAUTHENTICATED, "the token expired; reconnect with a fresh one")
            return
        seconds = self._edge.settings.websocket.idle_timeout_seconds
        self._close(CloseCode.IDLE_TIMEOUT, f"idle for {seconds:g} s with no subscription")

    # What the link tells.

    def on_text(self, text: str) -> None:
        self._enqueue(text)

    def on_binary(self) -> None:
        """An utterance's audio, handled in order with the text frames around it. What waits is
        at most MACP_EDGE_MAX_AUDIO_BYTES: past that the frame is dropped (its size kept), and its
        utterance refused when the frame's turn comes."""
        if not self._state.open:
            return
        data = self._link.binary_message()
        if self._voice is None:
            self._voice = Utterances()
        if self._voice.queued_bytes + len(data) > self._edge.settings.max_audio_bytes:
            self._enqueue(len(data))
        else:
            self._voice.queued_bytes += len(data)
            self._enqueue(data)

    def _enqueue(self, item: str | bytes | int) -> None:
        if not self._state.open:
            return
        now = self._idle_since = asyncio.get_running_loop().time()
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append((now, item))
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def on_closed(self) -> None:
        if self._state is ConnectionState.CLOSED:
            return
        self._move(ConnectionState.CLOSED)
        self._edge.open_streams.unwatch(self._caller.principal.token_id, self)
        self._stop_subscriptions()
        self._voice = None
        self._cancel_timer()
        if self._worker is not None:
            self._worker.cancel()
        log.info(
            "websocket closed",
            extra={
                "close_code": int(self._close_code) if self._close_code else None,
                "duration_ms": round((asyncio.get_running_loop().time() - self._started) * 1000, 2),
            },
        )

    async def _work(self) -> None:
        caller_var.set(self._caller)  # this task's context: the token exchanges of its frames read it
        try:
            while self._inbox and self._state.open:
                arrived, item = self._inbox.popleft()
                if isinstance(item, str):
                    await self._handle(item, arrived)
                else:
                    self._binary_audio(item, arrived)
        except Exception:  # a bug of ours: the client hears of it, the edge goes on
            log.exception("handling a websocket frame failed")
            self._close(CloseCode.INTERNAL_ERROR, "internal error; reconnect and resume")
        finally:
            self._worker = None
            if self._inbox is not None and not self._inbox:
                self._inbox = None

    async def _handle(self, text: str, arrived: float) -> None:
        try:
            frame = parse_frame(text)
        except FrameError as exc:
            self._emit(error_frame(exc.code, exc.message, action=exc.action, request_id=exc.request_id))
            return
        if frame.action == "audio" and frame.audio is not None and self._open_utterance(frame):
            # An open utterance's audio: its pace is bounded by the utterance, not the rate limits.
            self._feed(frame.conversation_id, frame.audio, arrived, frame.request_id)
            return
        if frame.request_id is None:
            frame = dataclasses.replace(frame, request_id=new_request_id())
        reset = request_id_var.set(frame.request_id)
        trace = self._trace(frame)
        try:
            decision = await self._edge.rate_limits.check(self._caller)
            if not decision.admitted:
                self._emit(
                    error_frame(
                        "RESOURCE_EXHAUSTED",
                        refusal(decision),
                        action=frame.action,
                        request_id=frame.request_id,
                        retry_after=retry_after(decision),
                    )
                )
                return
            if frame.action in VOICE_ACTIONS:
                await self._voice_action(frame, arrived)
            else:
                await self._dispatch(frame)
        except grpc.aio.AioRpcError as exc:
            code, message = rpc_error_fields(exc)
            self._emit(error_frame(code, message, action=frame.action, request_id=frame.request_id))
        except DomainError as exc:
            self._emit(
                error_frame(exc.code.name, exc.message, action=frame.action, request_id=frame.request_id)
            )
        finally:
            if trace is not None:
                trace.end()
            reset_quietly(request_id_var, reset)

    def _trace(self, frame: ClientFrame) -> tracing.Scope | None:
        """The action's span (tracing on; not for pings), a new trace's root, and its context in the
        ConverseRequest the action sends."""
        if frame.action in ("ping", "audio") or not tracing.enabled():
            return None
        attributes = {"macp.ws.action": frame.action, "macp.conversation_id": frame.conversation_id}
        if frame.message_id is not None:
            attributes["macp.message_id"] = frame.message_id
        trace = tracing.begin(
            f"WS {frame.action}",
            kind=SpanKind.SERVER,
            root=True,
            attributes=attributes,
            service=EDGE.name,
            links=[self._handshake] if self._handshake is not None else (),
        )
        if frame.request is not None:
            tracing.inject(frame.request.trace_context)
        return trace

    async def _dispatch(self, frame: ClientFrame) -> None:
        if frame.action == "ping":
            self._emit(reply_frame("pong", frame))
            return
        subscriptions = self._subscriptions or {}
        current = subscriptions.get(frame.conversation_id)
        if frame.action == "unsubscribe":
            if current is not None:
                del subscriptions[frame.conversation_id]
                current.cancel()
                self._track_subscriptions()
            self._emit(reply_frame("unsubscribed", frame))
            return
        assert frame.request is not None
        if frame.action == "subscribe":
            resume = frame.request.join.after_event_id
            if current is not None and not resume:
                self._emit(reply_frame("subscribed", frame, last_event_id=None))
                return
            if current is not None:  # resubscribing from an event: a fresh stream replays from there
                del subscriptions[frame.conversation_id]
                current.cancel()
                self._track_subscriptions()
            if await self._open_stream(frame):
                self._emit(reply_frame("subscribed", frame, last_event_id=resume or None))
            return
        await self._send(frame, frame.message_id)

    async def _send(self, frame: ClientFrame, message_id: str | None) -> None:
        """Hands the frame's request to its conversation's stream (opening it if need be) and acks."""
        assert frame.request is not None
        current = (self._subscriptions or {}).get(frame.conversation_id)
        if current is None:
            if not await self._open_stream(frame):
                return
        else:
            await current.write(frame.request, self._edge.timeout)
        extra = {"message_id": message_id} if message_id is not None else {}
        if frame.request.trace_context:  # tracing on: where the client finds this action's trace
            extra["traceparent"] = frame.request.trace_context[tracing.TRACEPARENT]
        self._emit(reply_frame("ack", frame, **extra))

    # A spoken message (services/edge/ws/utterances.py): gathered here, sent at its end.

    def _open_utterance(self, frame: ClientFrame) -> OpenUtterance | None:
        return self._voice.open.get(frame.conversation_id) if self._voice is not None else None

    async def _voice_action(self, frame: ClientFrame, arrived: float) -> None:
        if self._voice is None:
            self._voice = Utterances()
        utterances = self._voice.open
        current = utterances.get(frame.conversation_id)

        def refuse(message: str, code: str = "INVALID_ARGUMENT") -> None:
            self._emit(
                error_frame(
                    code,
                    message,
                    action=frame.action,
                    request_id=frame.request_id,
                    conversation_id=frame.conversation_id,
                )
            )

        if frame.action == "utterance_start":
            assert frame.request is not None
            assert frame.message_id is not None
            limit = self._edge.settings.websocket.max_subscriptions
            if current is not None:
                refuse(
                    "conversation_id: an utterance is already open in this conversation; "
                    "send utterance_end or utterance_cancel first"
                )
            elif len(utterances) >= limit:
                refuse(
                    f"conversation_id: this connection already has {limit} utterances open "
                    "(MACP_EDGE_WS_MAX_SUBSCRIPTIONS); end one first",
                    "RESOURCE_EXHAUSTED",
                )
            else:
                utterances[frame.conversation_id] = OpenUtterance(
                    frame.request.utterance, arrived, self._edge.settings.max_audio_bytes
                )
                self._emit(reply_frame("ack", frame, message_id=frame.message_id))
            return
        if frame.action == "utterance_cancel":
            utterances.pop(frame.conversation_id, None)
            self._emit(reply_frame("ack", frame))
            return
        if current is None:
            refuse(
                f"{'audio' if frame.action == 'audio' else 'conversation_id'}: no utterance is open "
                "in this conversation; send utterance_start first"
            )
            return
        if frame.action == "audio":
            assert frame.audio is not None
            self._feed(frame.conversation_id, frame.audio, arrived, frame.request_id)
            return
        del utterances[frame.conversation_id]
        assert frame.request is not None
        try:
            current.finish(frame.request.utterance)
        except UtteranceRefused as exc:
            refuse(exc.message, exc.code)
            return
        await self._send(frame, current.message_id)

    def _binary_audio(self, data: bytes | int, arrived: float) -> None:
        """A binary frame's audio for the one open utterance, or the size of one that was dropped
        (too much waited): its utterance is refused, as too big if the frame would have made it so."""
        voice = self._voice
        if voice is None:  # the connection closed since
            return
        if isinstance(data, bytes):
            voice.queued_bytes -= len(data)
        try:
            conversation_id = voice.binary_target()
        except UtteranceRefused as exc:
            self._emit(error_frame(exc.code, exc.message, action="audio"))
            return
        if isinstance(data, bytes):
            self._feed(conversation_id, data, arrived, None)
            return
        refusal = UtteranceRefused(
            f"audio: more than {self._edge.settings.max_audio_bytes} bytes of audio waited behind "
            "earlier frames; send it as it is spoken",
            "RESOURCE_EXHAUSTED",
        )
        try:
            voice.open[conversation_id].check_size(data)
        except UtteranceRefused as exc:
            refusal = exc
        del voice.open[conversation_id]
        self._emit(
            error_frame(refusal.code, refusal.message, action="audio", conversation_id=conversation_id)
        )

    def _feed(self, conversation_id: str, data: bytes, arrived: float, request_id: str | None) -> None:
        """Adds audio to the conversation's open utterance; a refusal drops the utterance."""
        assert self._voice is not None
        try:
            self._voice.open[conversation_id].add(data, arrived)
        except UtteranceRefused as exc:
            del self._voice.open[conversation_id]
            self._emit(
                error_frame(
                    exc.code,
                    exc.message,
                    action="audio",
                    request_id=request_id,
                    conversation_id=conversation_id,
                )
            )

    async def _open_stream(self, frame: ClientFrame) -> bool:
        """Opens the conversation's Converse stream with the frame's request; False (and an error
        frame sent) when this connection already follows as many as it may."""
        assert frame.request is not None
        limit = self._edge.settings.websocket.max_subscriptions
        if self._subscriptions is None:
            self._subscriptions = {}
        if len(self._subscriptions) >= limit:
            self._emit(
                error_frame(
                    "RESOURCE_EXHAUSTED",
                    f"conversation_id: this connection already follows {limit} conversations "
                    "(MACP_EDGE_WS_MAX_SUBSCRIPTIONS); unsubscribe from one first",
                    action=frame.action,
                    request_id=frame.request_id,
                )
            )
            return False
        subscription = await Subscription.open(self._edge, frame.request, self._push, self._stream_ended)
        self._subscriptions[frame.conversation_id] = subscription
        self._track_subscriptions()
        return True

    def _stream_ended(self, subscription: Subscription) -> None:
        if self._subscriptions and self._subscriptions.get(subscription.conversation_id) is subscription:
            del self._subscriptions[subscription.conversation_id]
            self._track_subscriptions()

    def _stop_subscriptions(self) -> None:
        if self._subscriptions:
            for subscription in self._subscriptions.values():
                subscription.cancel()
            self._subscriptions.clear()

    # Sending.

    def _emit(self, text: str) -> None:
        """Sends a frame now (the link holds it while the client is not reading); more frames
        waiting than MACP_EDGE_WS_SEND_QUEUE means the client is too slow for its conversations."""
        if not self._state.open:
            return
        if self._link.send_text(text) and self._link.too_slow():
            self._too_slow()

    def _push(self, text: str) -> None:
        """A subscription's event frame (services/edge/ws/streams.py)."""
        self._emit(text)

    def _too_slow(self) -> None:
        size = self._edge.settings.websocket.send_queue
        log.warning("websocket client too slow; closing it", extra={"send_queue": size})
        # What already waits goes out first: the client reads its way to the close and resumes.
        self._close(CloseCode.TRY_AGAIN_LATER, f"too slow: {size} frames waiting; reconnect and resume")

    def _close(self, code: CloseCode, reason: str) -> None:
        """Closes from our side: the streams stop now (the orchestrator must not keep producing for
        a client that is going), the frames already sent go out before the close frame."""
        if not self._state.open:
            return
        self._move(ConnectionState.CLOSING)
        self._close_code = code
        self._stop_subscriptions()
        self._voice = None
        self._cancel_timer()
        self._link.close(int(code), close_reason(reason))
