"""The WebSocket API, `/v1/ws` (docs/websocket.md): one connection, any number of conversations.

The token comes at connect (`Authorization: Bearer` or `?access_token=`, for browsers, which cannot
set headers on a WebSocket) and is verified like an HTTP request's; a bad one is accepted only to
be closed with 4401, since a refused handshake tells a browser nothing. A connection is closed with
4401 too when its token expires, or is revoked (services/edge/open_streams.py). Client frames are JSON
routed by `action` (services/edge/ws_frames.py); each one counts against the edge's rate limits.

Why the state is lazy and nothing waits: the target is 5,000 idle connections at ≤ 16 KiB each.
The edge serves the protocol itself (services/edge/ws_link.py, plugged into uvicorn), so a frame
arriving is a callback, not a coroutine waiting on `receive()`. A connection that has subscribed to
nothing holds its caller and one timer (idle timeout or token expiry, whichever is first): no task,
no gRPC stream. Frames are handled in order by a task that lives only while there are frames to
handle; each subscription adds one Converse stream and its reader task (services/edge/ws_streams.py).

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
from collections.abc import Callable
from enum import IntEnum
from http import HTTPStatus
from urllib.parse import parse_qsl

import grpc
from opentelemetry.trace import SpanContext, SpanKind
from starlette.types import ASGIApp, Receive, Scope, Send
from wsproto.events import Request

from services.edge.auth import Caller, caller_var
from services.edge.context import EdgeContext
from services.edge.errors import error_response
from services.edge.rate_limits import refusal, retry_after
from services.edge.readiness import not_ready_message
from services.edge.source_limits import source_of
from services.edge.ws_frames import (
    ClientFrame,
    FrameError,
    error_frame,
    parse_frame,
    reply_frame,
    rpc_error_fields,
)
from services.edge.ws_link import WebSocketLink
from services.edge.ws_streams import Subscription
from services.runtime import tracing
from services.runtime.auth.jwt import InvalidToken
from services.runtime.context import new_request_id, request_id_var, reset_quietly
from services.runtime.errors import DomainError, Unavailable
from services.runtime.registry import EDGE

log = logging.getLogger("macp.edge.websocket")

WS_PATH = "/v1/ws"
# RFC 6455 section 5.5: a close frame's payload (code + reason) is at most 125 bytes.
MAX_REASON_BYTES = 123


class CloseCode(IntEnum):
    """The close codes the edge sends (docs/websocket.md lists them with those of the protocol,
    services/edge/ws_link.py: 1009, 1011 for a heartbeat, 1012)."""

    NORMAL = 1000
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # the send queue overflowed: the client reads too slowly
    UNAUTHENTICATED = 4401  # no token, a bad one, or it expired or was revoked while connected
    IDLE_TIMEOUT = 4408  # no frame and no subscription for MACP_EDGE_WS_IDLE_TIMEOUT_SECONDS
    RATE_LIMITED = 4429  # the connect itself was over a rate limit
    # The edge is not ready (services/edge/readiness.py), or the token cannot be checked right now.
    UNAVAILABLE = 4503


def _reason(text: str) -> str:
    encoded = text.encode()
    if len(encoded) <= MAX_REASON_BYTES:
        return text
    return encoded[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


def connect_token(headers: list[tuple[bytes, bytes]], query_string: str) -> str | None:
    """The bearer token of a WebSocket handshake: the Authorization header, else `access_token` in
    the query (RFC 6750 section 2.3), as browsers cannot set headers on a WebSocket."""
    values = [value for name, value in headers if name == b"authorization"]
    if values:
        scheme, _, token = values[0].decode("latin-1").partition(" ")
        if len(values) == 1 and scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    tokens = [value for name, value in parse_qsl(query_string) if name == "access_token"]
    return tokens[0] if len(tokens) == 1 and tokens[0] else None


class EdgeHandshake:
    """Decides each upgrade request of `/v1/ws` (services/edge/ws_link.py's `Handshake`): the
    token, its tenant and the rate limits, then an accepted `Connection` or a close with a code."""

    def __init__(self, edge: Callable[[], EdgeContext]) -> None:
        self._edge = edge

    async def __call__(self, link: WebSocketLink, request: Request) -> None:
        request_id_var.set(new_request_id())
        edge = self._edge()
        if not edge.readiness.ready:  # services/edge/readiness.py: before any work is accepted
            link.accept_and_close(CloseCode.UNAVAILABLE, _reason(not_ready_message(edge.readiness.not_ready)))
            return
        headers = [(name.lower(), value) for name, value in request.extra_headers]
        # Counted by source address as an HTTP request is (services/edge/source_limits.py): a
        # connect without a token against `source`, a bad token against `source_failures`.
        limits = edge.rate_limits
        forwarded = [value for name, value in headers if name == b"x-forwarded-for"]
        address = source_of(forwarded[-1] if forwarded else None, link.peer_host)
        token = connect_token(headers, request.target.partition("?")[2])
        if token is None:
            refused = limits.blocked(address)
            if refused is None:
                decision = await limits.check_source(address)
                refused = None if decision.admitted else decision
            if refused is not None:
                link.accept_and_close(CloseCode.RATE_LIMITED, _reason(refusal(refused)))
                return
            link.accept_and_close(
                CloseCode.UNAUTHENTICATED, "send Authorization: Bearer <token> or ?access_token="
            )
            return
        try:
            claims = await edge.verifier.verify(token)
        except InvalidToken as exc:
            log.info("websocket token refused", extra={"reason": exc.reason})
            if limits.blocked(address) is None:  # before the client hears, so its retry finds it
                await limits.count_failure(address)
            link.accept_and_close(CloseCode.UNAUTHENTICATED, _reason(f"invalid token: {exc.reason}"))
            return
        except Unavailable as exc:
            link.accept_and_close(CloseCode.UNAVAILABLE, _reason(exc.message))
            return
        if claims.tenant_id is None:
            if limits.blocked(address) is None:
                await limits.count_failure(address)
            link.accept_and_close(CloseCode.UNAUTHENTICATED, "invalid token: missing_claim: tenant_id")
            return
        caller = Caller(token, claims)
        decision = await limits.check(caller)
        if not decision.admitted:
            link.accept_and_close(CloseCode.RATE_LIMITED, _reason(refusal(decision)))
            return
        connection = Connection(edge, caller, link, _handshake_trace(headers))
        link.accept(connection)
        connection.start()


def _handshake_trace(headers: list[tuple[bytes, bytes]]) -> SpanContext | None:
    """The span context of the handshake's `traceparent` (tracing on): each action's span links to it."""
    if not tracing.enabled():
        return None
    found = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in headers
        if name in (b"traceparent", b"tracestate")
    }
    return tracing.span_context_of(found)


class Connection:
    """An accepted, authenticated connection (see the module docstring for what it holds when).

    Event-driven: the link calls `on_text` for each frame; frames are handled in order by a task
    that exists only while there are frames to handle. Everything sent goes out through the link at
    once (`send_text` does not wait), so replies and events keep the order they happened in."""

    __slots__ = (
        "_caller",
        "_close_code",
        "_closed",
        "_edge",
        "_expires_at",
        "_handshake",
        "_inbox",
        "_last_frame",
        "_link",
        "_started",
        "_subscriptions",
        "_timer",
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
        self._started = loop.time()
        self._last_frame = self._started
        # The token's expiry on the loop's clock: the connection closes (4401) when it passes.
        self._expires_at = self._started + (caller.claims.exp - time.time())
        self._subscriptions: dict[str, Subscription] | None = None
        self._inbox: deque[str] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._close_code: CloseCode | None = None
        self._closed = False

    def start(self) -> None:
        self._edge.open_streams.watch(self._caller.claims.jti, self)
        self._arm()

    def token_revoked(self) -> None:
        """The token was revoked while connected (services/edge/open_streams.py): as when it expires."""
        self._close(CloseCode.UNAUTHENTICATED, "the token was revoked; reconnect with a valid one")

    # Deadlines: one timer, at the idle timeout (while following nothing) or the token's expiry.

    def _deadline(self) -> float:
        idle = math.inf
        if not self._subscriptions:
            idle = self._last_frame + self._edge.settings.websocket.idle_timeout_seconds
        return min(idle, self._expires_at)

    def _arm(self) -> None:
        if self._closed:
            return
        self._timer = asyncio.get_running_loop().call_at(self._deadline(), self._on_deadline)

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
        if self._closed or self._close_code is not None:
            return
        self._last_frame = asyncio.get_running_loop().time()
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(text)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def on_binary(self) -> None:
        self._last_frame = asyncio.get_running_loop().time()
        self._emit(error_frame("INVALID_ARGUMENT", "frames are JSON text, not binary"))

    def on_closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._edge.open_streams.unwatch(self._caller.claims.jti, self)
        self._stop_subscriptions()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
            while self._inbox and not self._closed and self._close_code is None:
                await self._handle(self._inbox.popleft())
        except Exception:  # a bug of ours: the client hears of it, the edge goes on
            log.exception("handling a websocket frame failed")
            self._close(CloseCode.INTERNAL_ERROR, "internal error; reconnect and resume")
        finally:
            self._worker = None
            if self._inbox is not None and not self._inbox:
                self._inbox = None

    async def _handle(self, text: str) -> None:
        try:
            frame = parse_frame(text)
        except FrameError as exc:
            self._emit(error_frame(exc.code, exc.message, action=exc.action, request_id=exc.request_id))
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
        if frame.action == "ping" or not tracing.enabled():
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
            if await self._open_stream(frame):
                self._emit(reply_frame("subscribed", frame, last_event_id=resume or None))
            return
        if current is None:
            if not await self._open_stream(frame):
                return
        else:
            await current.write(frame.request, self._edge.timeout)
        extra = {"message_id": frame.message_id} if frame.message_id is not None else {}
        if frame.request.trace_context:  # tracing on: where the client finds this action's trace
            extra["traceparent"] = frame.request.trace_context[tracing.TRACEPARENT]
        self._emit(reply_frame("ack", frame, **extra))

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
        return True

    def _stream_ended(self, subscription: Subscription) -> None:
        if self._subscriptions and self._subscriptions.get(subscription.conversation_id) is subscription:
            del self._subscriptions[subscription.conversation_id]

    def _stop_subscriptions(self) -> None:
        if self._subscriptions:
            for subscription in self._subscriptions.values():
                subscription.cancel()
            self._subscriptions.clear()

    # Sending.

    def _emit(self, text: str) -> None:
        """Sends a frame now (the link holds it while the client is not reading); more frames
        waiting than MACP_EDGE_WS_SEND_QUEUE means the client is too slow for its conversations."""
        if self._closed or self._close_code is not None:
            return
        if self._link.send_text(text) and self._link.too_slow():
            self._too_slow()

    def _push(self, text: str) -> None:
        """A subscription's event frame (services/edge/ws_streams.py)."""
        self._emit(text)

    def _too_slow(self) -> None:
        size = self._edge.settings.websocket.send_queue
        log.warning("websocket client too slow; closing it", extra={"send_queue": size})
        # What already waits goes out first: the client reads its way to the close and resumes.
        self._close(CloseCode.TRY_AGAIN_LATER, f"too slow: {size} frames waiting; reconnect and resume")

    def _close(self, code: CloseCode, reason: str) -> None:
        """Closes from our side: the streams stop now (the orchestrator must not keep producing for
        a client that is going), the frames already sent go out before the close frame."""
        if self._close_code is not None or self._closed:
            return
        self._close_code = code
        self._stop_subscriptions()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._link.close(int(code), _reason(reason))


class WebSocketGateway:
    """Answers what reaches the ASGI app at `/v1/ws` although WebSockets are served by the link
    (services/edge/ws_link.py, uvicorn's `ws` protocol): a plain GET is told to upgrade, and a
    WebSocket scope (only under a server without the link, such as a test client) is refused."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close"})
            return
        if scope["type"] == "http" and scope.get("path") == WS_PATH:
            # A plain GET of the WebSocket URL: say what it is instead of a bare 404.
            response = error_response(
                HTTPStatus.UPGRADE_REQUIRED, "UPGRADE_REQUIRED", f"{WS_PATH} is a WebSocket endpoint"
            )
            response.headers["upgrade"] = "websocket"
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)
