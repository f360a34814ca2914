"""The edge's own WebSocket protocol: RFC 6455 on an asyncio transport with wsproto, no task per
connection, plugged into uvicorn as its `ws` protocol (uvicorn hands an upgrade request over to it,
on the same port as the HTTP API).

Why not uvicorn's protocols: an idle connection must cost at most 12 KiB at 5,000 of them
(docs/benchmarks.md section 8). uvicorn's protocols alone cost about 18 KiB each, most of it the
ASGI task and the coroutines of the app waiting on `receive()`. Here an idle connection is this
object, its transport, wsproto's frame protocol (not its handshake: `_accepted`) and, after the
handshake, the edge's `Connection` (its caller and one timer); a frame arriving is a callback, and
work starts a task only while there is work (services/edge/ws/connection.py).

What it does itself, so the edge's `Connection` sees only whole messages and a sender:
- the handshake: uvicorn replays the upgrade request into `data_received`; only `/v1/ws` is served
  (any other path gets 403), then the edge decides (`Handshake`) whether to accept;
- messages over MACP_EDGE_WS_MAX_FRAME_BYTES close with 1009, text or binary; fragments are put
  together first (a binary message is an utterance's audio: services/edge/ws/utterances.py);
- heartbeats: a ping every MACP_EDGE_WS_HEARTBEAT_SECONDS, and 1011 when one is not answered
  within MACP_EDGE_WS_HEARTBEAT_TIMEOUT_SECONDS; the client's pings are answered;
- flow control: while the transport's buffer is over its high-water mark frames wait here; more
  than MACP_EDGE_WS_SEND_QUEUE waiting means the client reads too slowly (the edge closes it with
  1013); they are written out when the transport drains;
- closing: our close frame, then the transport closes when the client answers it or after a grace
  period; uvicorn's graceful shutdown closes open connections with 1012.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

log = logging.getLogger("macp.edge.websocket")

# How long a close we sent waits for the client's answering close before the socket is dropped.
CLOSE_TIMEOUT_SECONDS = 10.0
MESSAGE_TOO_BIG = 1009
KEEPALIVE_TIMEOUT = 1011
SERVICE_RESTART = 1012
# A close frame's reason is at most 123 bytes (RFC 6455 5.5): ASCII reasons of 120 characters fit.
MAX_CLOSE_REASON_CHARS = 120

# Handshakes being decided, held here until they are done.
_HANDSHAKES: set[asyncio.Task[None]] = set()


class Peer(Protocol):
    """What the edge's side of an accepted connection hears (services/edge/ws/connection.py)."""

    def on_text(self, text: str) -> None: ...

    def on_binary(self) -> None:
        """A whole binary message arrived; `WebSocketLink.binary_message()` holds it during this
        call (a peer that has no use for binary takes nothing)."""

    def on_closed(self) -> None:
        """The connection is over (the client closed it, went away, or we closed it)."""


class Handshake(Protocol):
    """Decides an upgrade request: `accept(link, request)` runs in a task of its own and either
    calls `link.accept(peer)` or `link.accept_and_close(code, reason)`."""

    async def __call__(self, link: WebSocketLink, request: Request) -> None: ...


class WebSocketLink(asyncio.Protocol):
    """One WebSocket connection's protocol (see the module docstring)."""

    __slots__ = (
        "_binary",
        "_close_timer",
        "_closing",
        "_connections",
        "_handshake",
        "_heartbeat",
        "_heartbeat_timeout",
        "_max_frame",
        "_max_waiting",
        "_parts",
        "_paused",
        "_peer",
        "_ping_payload",
        "_ping_timer",
        "_size",
        "_transport",
        "_waiting",
        "_ws",
        "path",
    )

    def __init__(
        self,
        handshake: Handshake,
        *,
        path: str,
        max_frame_bytes: int,
        max_waiting: int,
        heartbeat_seconds: float,
        heartbeat_timeout_seconds: float,
        server_state: Any,
    ) -> None:
        self.path = path
        self._handshake = handshake
        self._max_frame = max_frame_bytes
        self._max_waiting = max_waiting
        self._heartbeat = heartbeat_seconds
        self._heartbeat_timeout = heartbeat_timeout_seconds
        # uvicorn's set of open connections: its graceful shutdown calls `shutdown()` on each.
        self._connections: set[Any] = server_state.connections
        # The handshake's protocol until it is accepted, then the frame protocol alone (`_accepted`).
        self._ws: WSConnection | Connection = WSConnection(ConnectionType.SERVER)
        self._transport: asyncio.Transport | None = None
        self._peer: Peer | None = None
        self._parts: list[str] | None = None  # a fragmented text message being reassembled
        # A fragmented binary message being reassembled, or a whole one while the peer hears of it.
        self._binary: bytes | bytearray | None = None
        self._size = 0
        self._waiting: deque[bytes] | None = None  # frames held while the transport is paused
        self._paused = False
        self._closing = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None

    @classmethod
    def factory(
        cls,
        handshake: Handshake,
        *,
        path: str,
        max_frame_bytes: int,
        max_waiting: int,
        heartbeat_seconds: float,
        heartbeat_timeout_seconds: float,
    ) -> Callable[..., WebSocketLink]:
        """What uvicorn's `ws` setting takes: called with uvicorn's (config, server_state, app_state)."""

        def build(config: Any = None, server_state: Any = None, app_state: Any = None) -> WebSocketLink:
            return cls(
                handshake,
                path=path,
                max_frame_bytes=max_frame_bytes,
                max_waiting=max_waiting,
                heartbeat_seconds=heartbeat_seconds,
                heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                server_state=server_state,
            )

        return build

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, so no isinstance check).
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        for timer in (self._close_timer, self._ping_timer):
            if timer is not None:
                timer.cancel()
        self._close_timer = self._ping_timer = None
        self._waiting = None
        self._closing = True
        peer, self._peer = self._peer, None
        if peer is not None:
            peer.on_closed()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiting, self._waiting = self._waiting, None
        if waiting and self._transport is not None:
            self._transport.writelines(waiting)

    def data_received(self, data: bytes) -> None:
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                self._handle(event)
        except RemoteProtocolError as exc:  # not RFC 6455: answer what wsproto suggests, then drop
            self._write(self._ws.send(exc.event_hint) if exc.event_hint is not None else b"")
            self._drop()
        except LocalProtocolError:  # data after our close handshake completed
            self._drop()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    # uvicorn's graceful shutdown

    def shutdown(self) -> None:
        if self._ws.state == ConnectionState.OPEN:
            self.close(SERVICE_RESTART, "the edge is restarting; reconnect and resume")
        else:
            self._drop()

    # What the edge calls

    @property
    def peer_host(self) -> str | None:
        """The TCP peer's address (Envoy's, behind it: the edge reads x-forwarded-for for the client)."""
        if self._transport is None:
            return None
        peername = self._transport.get_extra_info("peername")
        return str(peername[0]) if isinstance(peername, tuple) and peername else None

    def accept(self, peer: Peer) -> None:
        """Completes the handshake; frames from now on go to `peer`."""
        if self._transport is None or self._transport.is_closing():
            peer.on_closed()
            return
        self._peer = peer
        self._accepted()
        self._schedule_ping()

    def accept_and_close(self, code: int, reason: str) -> None:
        """Accepted only to be closed with `code`: a refused handshake tells a browser nothing."""
        if self._transport is None or self._transport.is_closing():
            return
        self._accepted()
        self.close(code, reason)

    def send_text(self, text: str) -> bool:
        """Writes one text frame; False once the connection is closing. Frames written while the
        client does not read are held here; more than the allowed number waiting is `too_slow()`."""
        if self._closing or self._ws.state != ConnectionState.OPEN:
            return False
        data = self._ws.send(TextMessage(data=text))
        if not self._paused:
            self._write(data)
            return True
        if self._waiting is None:
            self._waiting = deque()
        self._waiting.append(data)
        return True

    def binary_message(self) -> bytes:
        """The binary message the peer is being told of (`Peer.on_binary`); empty otherwise."""
        return bytes(self._binary) if self._binary is not None else b""

    def too_slow(self) -> bool:
        waiting = self._waiting
        return waiting is not None and len(waiting) > self._max_waiting

    def close(self, code: int, reason: str, *, drop_waiting: bool = False) -> None:
        """Sends our close frame (after what is waiting, unless `drop_waiting`) and drops the socket
        when the client answers it or CLOSE_TIMEOUT_SECONDS after."""
        if self._transport is None or self._closing:
            return
        self._closing = True
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        if drop_waiting:
            self._waiting = None
        if self._ws.state == ConnectionState.OPEN:
            frame = self._ws.send(CloseConnection(code=code, reason=reason))
            if self._waiting:
                self._waiting.append(frame)
            else:
                self._write(frame)
        loop = asyncio.get_running_loop()
        self._close_timer = loop.call_later(CLOSE_TIMEOUT_SECONDS, self._drop)

    # Inside

    def _accepted(self) -> None:
        """Sends the 101, then keeps only the frame protocol: wsproto's `WSConnection` holds its
        handshake for the connection's life (h11's connection, the request and its headers, an event
        queue: about 4.5 KiB of each idle connection, docs/benchmarks.md section 8), although after
        the 101 only its `Connection` is used, whose `send`, `receive_data`, `events` and `state`
        are all this link calls."""
        self._write(self._ws.send(AcceptConnection()))  # a second accept is wsproto's error, as before
        if isinstance(self._ws, WSConnection) and self._ws.connection is not None:
            self._ws = self._ws.connection

    def _write(self, data: bytes) -> None:
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _drop(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _handle(self, event: Event) -> None:
        if isinstance(event, TextMessage):
            self._text(event)
        elif isinstance(event, BytesMessage):
            self._bytes(event)
        elif isinstance(event, Ping):
            self._write(self._ws.send(event.response()))
        elif isinstance(event, Pong):
            if event.payload == self._ping_payload:
                self._ping_payload = None
                self._schedule_ping()
        elif isinstance(event, CloseConnection):
            if self._ws.state == ConnectionState.REMOTE_CLOSING:
                self._write(self._ws.send(event.response()))
            elif self._ws.state == ConnectionState.OPEN:
                # No close frame came: wsproto reports a frame it could not read this way (a text
                # frame that is not UTF-8: 1007; a protocol error: 1002). RFC 6455 7.1.7: say why
                # with our own close frame before dropping the connection.
                reason = (event.reason or "")[:MAX_CLOSE_REASON_CHARS]
                self._write(self._ws.send(CloseConnection(code=event.code, reason=reason)))
            self._drop()
        elif isinstance(event, Request):
            if event.target.partition("?")[0] != self.path:
                self._write(self._ws.send(RejectConnection(status_code=403)))
                self._drop()
                return
            task = asyncio.get_running_loop().create_task(self._handshake(self, event))
            # The loop keeps only a weak reference to a task: hold it until it is done.
            _HANDSHAKES.add(task)
            task.add_done_callback(_HANDSHAKES.discard)

    def _text(self, event: TextMessage) -> None:
        # The limit is in bytes, as sent: a text frame's UTF-8 length (its length when all ASCII).
        data = event.data
        self._size += len(data) if data.isascii() else len(data.encode())
        if self._size > self._max_frame:
            self._parts, self._size = None, 0
            self.close(MESSAGE_TOO_BIG, f"a frame is at most {self._max_frame} bytes")
            return
        if not event.message_finished:
            if self._parts is None:
                self._parts = []
            self._parts.append(event.data)
            return
        text = event.data
        if self._parts is not None:
            self._parts.append(text)
            text, self._parts = "".join(self._parts), None
        self._size = 0
        if self._peer is not None and not self._closing:
            self._peer.on_text(text)

    def _bytes(self, event: BytesMessage) -> None:
        self._size += len(event.data)
        if self._size > self._max_frame:
            self._binary, self._size = None, 0
            self.close(MESSAGE_TOO_BIG, f"a frame is at most {self._max_frame} bytes")
            return
        if not event.message_finished:
            if self._binary is None:
                self._binary = bytearray()
            self._binary += event.data
            return
        if self._binary is None:
            self._binary = event.data
        else:
            self._binary += event.data
        self._size = 0
        try:
            if self._peer is not None and not self._closing:
                self._peer.on_binary()
        finally:
            self._binary = None

    # Heartbeats: one timer, either until the next ping or until the answer is due.

    def _schedule_ping(self) -> None:
        if self._heartbeat <= 0 or self._closing:
            return
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        self._ping_timer = asyncio.get_running_loop().call_later(self._heartbeat, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if self._closing or self._ws.state != ConnectionState.OPEN:
            return
        self._ping_payload = os.urandom(4)
        self._write(self._ws.send(Ping(payload=self._ping_payload)))
        self._ping_timer = asyncio.get_running_loop().call_later(
            self._heartbeat_timeout, self._ping_unanswered
        )

    def _ping_unanswered(self) -> None:
        self._ping_timer = None
        log.info("websocket heartbeat not answered; closing")
        self.close(KEEPALIVE_TIMEOUT, "keepalive ping timeout", drop_waiting=True)
