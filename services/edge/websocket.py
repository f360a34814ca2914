"""The WebSocket API, `/v1/ws` (docs/websocket.md): one connection, any number of conversations.

The token comes at connect (`Authorization: Bearer` or `?access_token=`, for browsers, which cannot
set headers on a WebSocket) and is verified like an HTTP request's; a bad one is accepted only to
be closed with 4401, since a refused handshake tells a browser nothing. Client frames are JSON
routed by `action` (services/edge/ws_frames.py); each one counts against the edge's rate limits.

Why the state is lazy: the target is 5,000 idle connections at ≤ 16 KiB each. A connection that
has subscribed to nothing holds its caller, one timer (idle timeout or token expiry, whichever is
first) and the coroutine waiting on `receive()`: no gRPC stream, no queue, no extra task. The first
subscription adds the send queue and the one writer task; each subscription one Converse stream
and its reader task (services/edge/ws_streams.py).

Why one bounded queue: events of every subscription go through it to the writer, which alone
sends; readers never wait on the client. When it overflows the client is too slow to follow its
conversations: it is closed with 1013 (and resumes with `last_event_id` when it is ready), so it
never holds up the orchestrator's stream or anyone else.

Why a trace per action, not per connection: a connection lives for hours and carries many turns.
With tracing on, each client frame but `ping` is a SERVER span of its own, the root of a new trace
(linked to the handshake's `traceparent`, if the client sent one), current while the frame is
handled, so the calls the edge makes for it carry it; on a Converse stream that is already open the
action itself carries it (`ConverseRequest.trace_context`), since the stream's metadata was sent
once, at subscribe. The `ack` names the trace (`traceparent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from enum import IntEnum
from http import HTTPStatus
from urllib.parse import parse_qsl

import grpc
from opentelemetry.trace import SpanContext, SpanKind
from starlette.types import ASGIApp, Receive, Scope, Send

from services.edge.auth import Caller, caller_var
from services.edge.context import EdgeContext
from services.edge.errors import error_response
from services.edge.rate_limits import retry_after
from services.edge.ws_frames import (
    ClientFrame,
    FrameError,
    error_frame,
    parse_frame,
    reply_frame,
    rpc_error_fields,
)
from services.edge.ws_streams import Subscription
from services.runtime import tracing
from services.runtime.auth.jwt import InvalidToken
from services.runtime.context import new_request_id, request_id_var
from services.runtime.errors import DomainError, Unavailable
from services.runtime.registry import EDGE

log = logging.getLogger("macp.edge.websocket")

WS_PATH = "/v1/ws"
# How long a closing connection waits for queued frames and the close frame to go out.
CLOSE_GRACE_SECONDS = 2.0
# A client closed as too slow first reads what already sits in its socket (up to the transport's
# and the kernel's buffers) before the close frame reaches it: it gets longer, then is dropped.
SLOW_CLOSE_GRACE_SECONDS = 10.0
# RFC 6455 section 5.5: a close frame's payload (code + reason) is at most 125 bytes.
MAX_REASON_BYTES = 123


class CloseCode(IntEnum):
    """The close codes the edge sends (docs/websocket.md lists them with those uvicorn sends)."""

    NORMAL = 1000
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # the send queue overflowed: the client reads too slowly
    UNAUTHENTICATED = 4401  # no token, a bad one, or it expired while connected
    IDLE_TIMEOUT = 4408  # no frame and no subscription for MACP_EDGE_WS_IDLE_TIMEOUT_SECONDS
    RATE_LIMITED = 4429  # the connect itself was over a rate limit
    UNAVAILABLE = 4503  # the token cannot be checked right now (keys or revocations unreachable)


def _reason(text: str) -> str:
    encoded = text.encode()
    if len(encoded) <= MAX_REASON_BYTES:
        return text
    return encoded[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


def connect_token(scope: Scope) -> str | None:
    """The bearer token of a WebSocket handshake: the Authorization header, else `access_token` in
    the query (RFC 6750 section 2.3), as browsers cannot set headers on a WebSocket."""
    headers: list[bytes] = [value for name, value in scope.get("headers", ()) if name == b"authorization"]
    if headers:
        scheme, _, token = headers[0].decode("latin-1").partition(" ")
        if len(headers) == 1 and scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
    tokens: list[str] = [value for name, value in query if name == "access_token"]
    return tokens[0] if len(tokens) == 1 and tokens[0] else None


async def _accept_and_close(send: Send, code: CloseCode, reason: str) -> None:
    # Accepted first: a close before accept is an HTTP 403 to the client, with no code or reason.
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": int(code), "reason": _reason(reason)})


async def serve_websocket(scope: Scope, receive: Receive, send: Send, edge: EdgeContext) -> None:
    """One WebSocket connection, from handshake to close."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    request_id_var.set(new_request_id())
    token = connect_token(scope)
    if token is None:
        await _accept_and_close(
            send, CloseCode.UNAUTHENTICATED, "send Authorization: Bearer <token> or ?access_token="
        )
        return
    try:
        claims = await edge.verifier.verify(token)
    except InvalidToken as exc:
        log.info("websocket token refused", extra={"reason": exc.reason})
        await _accept_and_close(send, CloseCode.UNAUTHENTICATED, f"invalid token: {exc.reason}")
        return
    except Unavailable as exc:
        await _accept_and_close(send, CloseCode.UNAVAILABLE, exc.message)
        return
    if claims.tenant_id is None:
        await _accept_and_close(send, CloseCode.UNAUTHENTICATED, "invalid token: missing_claim: tenant_id")
        return
    caller = Caller(token, claims)
    decision = await edge.rate_limits.check(caller)
    if not decision.admitted:
        limit = decision.refused_by.name if decision.refused_by else "a limit"
        await _accept_and_close(
            send,
            CloseCode.RATE_LIMITED,
            f"rate limit {limit} exceeded; retry after {retry_after(decision)} s",
        )
        return
    await send({"type": "websocket.accept"})
    caller_var.set(caller)  # this task's context: the token exchanges of its frames read it
    await Connection(edge, caller, receive, send, _handshake_trace(scope)).run()


def _handshake_trace(scope: Scope) -> SpanContext | None:
    """The span context of the handshake's `traceparent` (tracing on): each action's span links to it."""
    if not tracing.enabled():
        return None
    headers = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope.get("headers", ())
        if name in (b"traceparent", b"tracestate")
    }
    return tracing.span_context_of(headers)


class Connection:
    """An accepted, authenticated connection (see the module docstring for what it holds when)."""

    __slots__ = (
        "_caller",
        "_close",
        "_edge",
        "_expires_at",
        "_handshake",
        "_last_frame",
        "_open",
        "_queue",
        "_receive",
        "_send",
        "_started",
        "_subscriptions",
        "_timer",
        "_writer",
    )

    def __init__(
        self,
        edge: EdgeContext,
        caller: Caller,
        receive: Receive,
        send: Send,
        handshake: SpanContext | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._handshake = handshake
        self._edge = edge
        self._caller = caller
        self._receive = receive
        self._send = send
        self._started = loop.time()
        self._last_frame = self._started
        # The token's expiry on the loop's clock: the connection closes (4401) when it passes.
        self._expires_at = self._started + (caller.claims.exp - time.time())
        self._subscriptions: dict[str, Subscription] | None = None
        self._queue: asyncio.Queue[str | None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.Timeout | None = None
        self._close: tuple[CloseCode, str] | None = None
        self._open = True  # False once the client disconnected: nothing more is sent

    # The receive loop.

    def _deadline(self) -> float:
        idle = math.inf
        if not self._subscriptions:
            idle = self._last_frame + self._edge.settings.websocket.idle_timeout_seconds
        return min(idle, self._expires_at)

    def _timed_out(self) -> tuple[CloseCode, str]:
        if asyncio.get_running_loop().time() >= self._expires_at:
            return CloseCode.UNAUTHENTICATED, "the token expired; reconnect with a fresh one"
        seconds = self._edge.settings.websocket.idle_timeout_seconds
        return CloseCode.IDLE_TIMEOUT, f"idle for {seconds:g} s with no subscription"

    async def run(self) -> None:
        try:
            while self._close is None:
                try:
                    async with asyncio.timeout_at(self._deadline()) as timer:
                        self._timer = timer
                        message = await self._receive()
                except TimeoutError:
                    self._close = self._close or self._timed_out()
                    break
                finally:
                    self._timer = None
                if message["type"] == "websocket.disconnect":
                    self._open = False
                    return
                self._last_frame = asyncio.get_running_loop().time()
                text = message.get("text")
                if text is None:
                    await self._emit(error_frame("INVALID_ARGUMENT", "frames are JSON text, not binary"))
                    continue
                await self._handle(text)
            await self._finish(*self._close)
        finally:
            self._stop_subscriptions()
            if self._writer is not None:
                self._writer.cancel()
            log.info(
                "websocket closed",
                extra={
                    "close_code": int(self._close[0]) if self._close else None,
                    "duration_ms": round((asyncio.get_running_loop().time() - self._started) * 1000, 2),
                },
            )

    async def _handle(self, text: str) -> None:
        try:
            frame = parse_frame(text)
        except FrameError as exc:
            await self._emit(error_frame(exc.code, exc.message, action=exc.action, request_id=exc.request_id))
            return
        if frame.request_id is None:
            frame = dataclasses.replace(frame, request_id=new_request_id())
        reset = request_id_var.set(frame.request_id)
        trace = self._trace(frame)
        try:
            decision = await self._edge.rate_limits.check(self._caller)
            if not decision.admitted:
                wait = retry_after(decision)
                limit = decision.refused_by.name if decision.refused_by else "a limit"
                await self._emit(
                    error_frame(
                        "RESOURCE_EXHAUSTED",
                        f"rate limit {limit} exceeded; retry after {wait} s",
                        action=frame.action,
                        request_id=frame.request_id,
                        retry_after=wait,
                    )
                )
                return
            await self._dispatch(frame)
        except grpc.aio.AioRpcError as exc:
            code, message = rpc_error_fields(exc)
            await self._emit(error_frame(code, message, action=frame.action, request_id=frame.request_id))
        except DomainError as exc:
            await self._emit(
                error_frame(exc.code.name, exc.message, action=frame.action, request_id=frame.request_id)
            )
        finally:
            if trace is not None:
                trace.end()
            request_id_var.reset(reset)

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
            await self._emit(reply_frame("pong", frame))
            return
        subscriptions = self._subscriptions or {}
        current = subscriptions.get(frame.conversation_id)
        if frame.action == "unsubscribe":
            if current is not None:
                del subscriptions[frame.conversation_id]
                current.cancel()
            await self._emit(reply_frame("unsubscribed", frame))
            return
        assert frame.request is not None
        if frame.action == "subscribe":
            resume = frame.request.join.after_event_id
            if current is not None and not resume:
                await self._emit(reply_frame("subscribed", frame, last_event_id=None))
                return
            if current is not None:  # resubscribing from an event: a fresh stream replays from there
                del subscriptions[frame.conversation_id]
                current.cancel()
            if await self._open_stream(frame):
                await self._emit(reply_frame("subscribed", frame, last_event_id=resume or None))
            return
        if current is None:
            if not await self._open_stream(frame):
                return
        else:
            await current.write(frame.request, self._edge.timeout)
        extra = {"message_id": frame.message_id} if frame.message_id is not None else {}
        if frame.request.trace_context:  # tracing on: where the client finds this action's trace
            extra["traceparent"] = frame.request.trace_context[tracing.TRACEPARENT]
        await self._emit(reply_frame("ack", frame, **extra))

    async def _open_stream(self, frame: ClientFrame) -> bool:
        """Opens the conversation's Converse stream with the frame's request; False (and an error
        frame sent) when this connection already follows as many as it may."""
        assert frame.request is not None
        limit = self._edge.settings.websocket.max_subscriptions
        if self._subscriptions is None:
            self._subscriptions = {}
        if len(self._subscriptions) >= limit:
            await self._emit(
                error_frame(
                    "RESOURCE_EXHAUSTED",
                    f"conversation_id: this connection already follows {limit} conversations "
                    "(MACP_EDGE_WS_MAX_SUBSCRIPTIONS); unsubscribe from one first",
                    action=frame.action,
                    request_id=frame.request_id,
                )
            )
            return False
        self._start_writer()
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

    def _start_writer(self) -> None:
        if self._writer is None:
            self._queue = asyncio.Queue(self._edge.settings.websocket.send_queue)
            self._writer = asyncio.get_running_loop().create_task(self._write_frames(self._queue))

    async def _write_frames(self, queue: asyncio.Queue[str | None]) -> None:
        while True:
            text = await queue.get()
            if text is None:  # the connection is closing: everything before was sent
                return
            try:
                await self._send({"type": "websocket.send", "text": text})
            except (OSError, RuntimeError):  # the client went away; the receive loop hears it
                return

    async def _emit(self, text: str) -> None:
        """Sends a reply of the receive loop: directly while no writer exists, else queued behind
        the events so the client sees them in the order they happened."""
        if self._queue is not None:
            self._push(text)
            return
        if self._open:
            try:
                await self._send({"type": "websocket.send", "text": text})
            except (OSError, RuntimeError):
                self._open = False

    def _push(self, text: str) -> None:
        """Queues a frame without waiting; a full queue closes the connection as too slow."""
        if self._queue is None or self._close is not None:
            return
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            self._too_slow()

    def _too_slow(self) -> None:
        size = self._edge.settings.websocket.send_queue
        self._close = (CloseCode.TRY_AGAIN_LATER, f"too slow: {size} frames waiting; reconnect and resume")
        log.warning("websocket client too slow; closing it", extra={"send_queue": size})
        # Stop the streams now: the orchestrator must not keep producing for a client that is going.
        self._stop_subscriptions()
        if self._timer is not None:  # the receive loop is waiting: wake it to close
            self._timer.reschedule(asyncio.get_running_loop().time())

    async def _finish(self, code: CloseCode, reason: str) -> None:
        """Closes from our side: queued frames first (unless the client is too slow to take them),
        then the close frame, each within CLOSE_GRACE_SECONDS."""
        self._stop_subscriptions()
        writer, queue = self._writer, self._queue
        if writer is not None and queue is not None:
            if code != CloseCode.TRY_AGAIN_LATER:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)
                await asyncio.wait({writer}, timeout=CLOSE_GRACE_SECONDS)
            writer.cancel()
        if not self._open:
            return
        grace = SLOW_CLOSE_GRACE_SECONDS if code == CloseCode.TRY_AGAIN_LATER else CLOSE_GRACE_SECONDS
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            async with asyncio.timeout(grace):
                await self._send({"type": "websocket.close", "code": int(code), "reason": _reason(reason)})


class WebSocketGateway:
    """Serves `/v1/ws` ahead of the HTTP middleware (which answers WebSocket requests with HTTP
    statuses, where this API closes with codes); every other request passes through."""

    def __init__(self, app: ASGIApp, edge: Callable[[], EdgeContext]) -> None:
        self._app = app
        self._edge = edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope.get("path") == WS_PATH:
            await serve_websocket(scope, receive, send, self._edge())
            return
        if scope["type"] == "websocket":  # no other WebSocket route: refused at the handshake (403)
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
