"""The WebSocket API (`/v1/ws`, docs/websocket.md): one connection following any number of
conversations, their rounds as typed events, and a resume after any disconnect that loses and
repeats nothing.

How nothing is lost: every conversation followed keeps a `Cursor`, its last event delivered. When
the connection drops (a network failure, the edge restarting: 1012, too slow: 1013, a heartbeat
missed: 1011) or the token expires (4401: renewed first), the socket connects again and subscribes
to each conversation with `last_event_id`, so the edge replays what came after it. A conversation
whose stream the orchestrator ended with UNAVAILABLE is subscribed again the same way. Actions not
yet acknowledged (a `message`, a `cancel`, ...) are sent again on the new connection under their
own ids: a message is stored once by its id. How nothing is repeated: the cursor turns away any
event at or before the last delivered one (`repeats` counts them; the edge's replay should need
none). One gap is left: a conversation none of whose events arrived before a drop is subscribed
again live only, since there is no event to resume after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from macp_client.errors import MacpConnectionError, MacpError, error_of_frame
from macp_client.events import Cursor, Event, parse_event
from macp_client.transport import JsonObject, Transport

RECONNECTS = 5
RECONNECT_BASE_SECONDS = 0.1
# Close codes after which connecting again at once is pointless: wait a moment first.
_WAIT_FIRST = {4429: 1.0, 4503: 0.5}
UNAUTHENTICATED = 4401


@dataclass
class _Following:
    cursor: Cursor
    queue: asyncio.Queue[Event | MacpError] = field(default_factory=asyncio.Queue)


@dataclass
class _Pending:
    """A client frame sent and not yet answered; `reply` is None for one nobody waits on."""

    frame: JsonObject
    reply: asyncio.Future[JsonObject] | None


class ConversationSocket:
    """One WebSocket to the edge. Use it as an async context manager (`AsyncMacpClient.websocket()`)."""

    def __init__(self, transport: Transport, *, reconnects: int = RECONNECTS) -> None:
        self._transport = transport
        self._url = transport.base_url.replace("http", "ws", 1) + "/v1/ws"
        self._max_reconnects = reconnects
        self._ws: ClientConnection | None = None
        self._token: str | None = None
        self._connected = asyncio.Event()
        self._following: dict[str, _Following] = {}
        self._pending: dict[str, _Pending] = {}
        self._reader: asyncio.Task[None] | None = None
        self._failure: MacpError | None = None
        self._closing = False
        self._away = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.reconnects = 0  # connections made again after a drop

    async def __aenter__(self) -> ConversationSocket:
        await self._connect()
        self._reader = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._fail(MacpConnectionError("the socket is closed"))

    @property
    def repeats(self) -> int:
        """Events the edge delivered again and the socket turned away (see the module docstring)."""
        return sum(following.cursor.repeats for following in self._following.values())

    def last_event_id(self, conversation_id: str) -> str | None:
        following = self._following.get(conversation_id)
        return None if following is None else following.cursor.last_event_id

    # Actions (docs/websocket.md, "Client frames").

    async def subscribe(self, conversation_id: str, last_event_id: str | None = None) -> None:
        """Follow a conversation: its live events, or with `last_event_id` those after it first."""
        following = self._following.get(conversation_id)
        if following is None:
            self._following[conversation_id] = _Following(Cursor(last_event_id))
        elif last_event_id is not None:
            following.cursor = Cursor(last_event_id)  # a fresh replay; its readers keep reading
        else:
            return  # followed already: the edge would answer a no-op
        await self._request(self._subscribe_frame(conversation_id))

    async def unsubscribe(self, conversation_id: str) -> None:
        self._following.pop(conversation_id, None)
        await self._request({"action": "unsubscribe", "conversation_id": conversation_id})

    async def send_message(
        self,
        conversation_id: str,
        text: str,
        *,
        message_id: str | None = None,
        mention_agent_ids: Sequence[str] = (),
    ) -> str:
        """Post a user message (following its conversation first); its id, once the edge acked it."""
        await self.subscribe(conversation_id)
        frame: JsonObject = {
            "action": "message",
            "conversation_id": conversation_id,
            "message_id": message_id or str(uuid.uuid4()),
            "text": text,
        }
        if mention_agent_ids:
            frame["mention_agent_ids"] = list(mention_agent_ids)
        reply = await self._request(frame)
        return str(reply.get("message_id") or frame["message_id"])

    async def bid(
        self, conversation_id: str, agent_id: str, score: float, *, turn_id: str | None = None
    ) -> None:
        frame: JsonObject = {"action": "bid", "conversation_id": conversation_id, "agent_id": agent_id}
        frame["score"] = score
        if turn_id is not None:
            frame["turn_id"] = turn_id
        await self._request(frame)

    async def cancel(
        self, conversation_id: str, *, turn_id: str | None = None, reason: str | None = None
    ) -> None:
        """Cancel a turn (or, without `turn_id`, every turn in flight and queued)."""
        frame: JsonObject = {"action": "cancel", "conversation_id": conversation_id}
        if turn_id is not None:
            frame["turn_id"] = turn_id
        if reason is not None:
            frame["reason"] = reason
        await self._request(frame)

    async def ping(self) -> None:
        await self._request({"action": "ping"})

    async def events(self, conversation_id: str) -> AsyncIterator[Event]:
        """The followed conversation's events, once each and in order, for as long as the caller
        iterates; a failure that ended following it is raised."""
        following = self._following.get(conversation_id)
        if following is None:
            raise MacpError("FAILED_PRECONDITION", f"conversation_id: {conversation_id} is not followed")
        while True:
            item = await following.queue.get()
            if isinstance(item, MacpError):
                raise item
            yield item

    async def round(
        self,
        conversation_id: str,
        text: str,
        *,
        message_id: str | None = None,
        mention_agent_ids: Sequence[str] = (),
    ) -> AsyncIterator[Event]:
        """Send a message and yield the conversation's events up to the end of its round (its
        RoundCompleted, or a fatal error)."""
        message_id = message_id or str(uuid.uuid4())
        await self.send_message(
            conversation_id, text, message_id=message_id, mention_agent_ids=mention_agent_ids
        )
        async for event in self.events(conversation_id):
            yield event
            if event.ends_round_of(message_id):
                return

    async def interrupt(self, away_seconds: float = 0.0) -> None:
        """Drop the connection at once, without a close handshake, as a network failure would, and
        stay away `away_seconds` before connecting again: for testing what resuming does."""
        self._away = away_seconds
        if self._ws is not None:
            self._connected.clear()
            self._ws.transport.abort()
        await asyncio.sleep(0)

    # The connection.

    def _subscribe_frame(self, conversation_id: str) -> JsonObject:
        frame: JsonObject = {"action": "subscribe", "conversation_id": conversation_id}
        following = self._following.get(conversation_id)
        if following is not None and following.cursor.last_event_id is not None:
            frame["last_event_id"] = following.cursor.last_event_id
        return frame

    async def _connect(self) -> None:
        self._token = await self._transport.bearer()
        headers = {"authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            self._ws = await connect(
                self._url,
                additional_headers=headers,
                compression=None,  # the edge negotiates none (docs/websocket.md)
                proxy=True if self._transport.trust_env else None,
                open_timeout=self._transport.timeout,
            )
        except (OSError, InvalidHandshake, TimeoutError) as error:
            raise MacpConnectionError(f"cannot connect to {self._url}: {error!r}") from error
        self._connected.set()

    async def _request(self, frame: JsonObject) -> JsonObject:
        if self._failure is not None:
            raise self._failure
        request_id = uuid.uuid4().hex
        frame = {**frame, "request_id": request_id}
        reply: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(frame, reply)
        try:
            await self._send(frame)
            return await asyncio.wait_for(asyncio.shield(reply), self._transport.timeout * 2)
        finally:
            self._pending.pop(request_id, None)

    async def _send(self, frame: JsonObject) -> None:
        """Send on the current connection; a frame lost to a drop stays pending and goes again."""
        await self._connected.wait()
        if self._ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._ws.send(json.dumps(frame))

    async def _run(self) -> None:
        """Read frames until closed; after a drop, connect again and resume (module docstring)."""
        failures = 0
        while not self._closing:
            assert self._ws is not None
            code = 1006
            received = False
            try:
                async for raw in self._ws:
                    received, failures = True, 0
                    with contextlib.suppress(ValueError):  # not JSON: nothing the edge sends
                        self._dispatch(json.loads(raw))
            except ConnectionClosed:
                pass
            if self._ws.close_code is not None:
                code = self._ws.close_code
            self._connected.clear()
            if self._closing:
                return
            if not received:  # closed as soon as connected: count it as a failed connect
                failures += 1
                if failures > self._max_reconnects:
                    reason = self._ws.close_reason or "the connection kept closing"
                    self._fail(MacpConnectionError(f"{self._url}: closed with {code}: {reason}"))
                    return
            if code == UNAUTHENTICATED:
                try:
                    renewed = await self._transport.keeper.renew(self._transport, self._token)
                except MacpError as error:
                    self._fail(error)
                    return
                if not renewed:
                    self._fail(MacpError("UNAUTHENTICATED", self._ws.close_reason or "the token was refused"))
                    return
            await asyncio.sleep(max(self._away, _WAIT_FIRST.get(code, 0.0)))
            self._away = 0.0
            while not self._closing:
                try:
                    await self._connect()
                    break
                except MacpError as error:
                    failures += 1
                    if failures > self._max_reconnects:
                        self._fail(error)
                        return
                    await asyncio.sleep(RECONNECT_BASE_SECONDS * 2**failures)
            if self._closing:
                return
            self.reconnects += 1
            await self._resume()

    async def _resume(self) -> None:
        """On a new connection: follow every conversation again from its cursor, then send again
        what was not answered (its waiting caller gets the new answer, under the same request id)."""
        waiting = {
            pending.frame.get("conversation_id"): pending
            for pending in self._pending.values()
            if pending.reply is not None and pending.frame.get("action") == "subscribe"
        }
        for request_id in [key for key, pending in self._pending.items() if pending.reply is None]:
            del self._pending[request_id]
        for conversation_id in list(self._following):
            pending = waiting.get(conversation_id)
            if pending is None:
                await self._send_background(self._subscribe_frame(conversation_id))
            else:
                pending.frame.update(self._subscribe_frame(conversation_id))  # from the cursor now
                await self._send(pending.frame)
        for pending in list(self._pending.values()):
            if pending.reply is not None and pending.frame.get("action") != "subscribe":
                await self._send(pending.frame)

    async def _send_background(self, frame: JsonObject) -> None:
        request_id = uuid.uuid4().hex
        frame = {**frame, "request_id": request_id}
        self._pending[request_id] = _Pending(frame, None)
        await self._send(frame)

    def _dispatch(self, frame: JsonObject) -> None:
        kind = frame.get("type")
        if kind == "event":
            document = frame.get("event")
            if not isinstance(document, dict):
                return
            event = parse_event(document)
            following = self._following.get(event.conversation_id)
            if following is not None and following.cursor.admit(event):
                following.queue.put_nowait(event)
            return
        pending = self._pending.get(str(frame.get("request_id")))
        if pending is not None:
            self._answer(pending, frame)
            return
        conversation_id = frame.get("conversation_id")
        if kind == "error" and frame.get("subscribed") is False and isinstance(conversation_id, str):
            self._stream_ended(conversation_id, error_of_frame(frame))

    def _answer(self, pending: _Pending, frame: JsonObject) -> None:
        if pending.reply is None:  # a subscription renewed in the background
            self._pending.pop(str(frame.get("request_id")), None)
            conversation_id = pending.frame.get("conversation_id")
            if frame.get("type") == "error" and isinstance(conversation_id, str):
                self._stream_ended(conversation_id, error_of_frame(frame))
            return
        if pending.reply.done():
            return
        if frame.get("type") == "error":
            pending.reply.set_exception(error_of_frame(frame))
        else:
            pending.reply.set_result(frame)

    def _stream_ended(self, conversation_id: str, error: MacpError) -> None:
        """The edge stopped following a conversation: resume it when the log was only away
        (UNAVAILABLE), otherwise tell whoever reads its events."""
        following = self._following.get(conversation_id)
        if following is None:
            return
        if error.code == "UNAVAILABLE" and following.cursor.last_event_id is not None:
            task = asyncio.get_running_loop().create_task(
                self._send_background(self._subscribe_frame(conversation_id))
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        following.queue.put_nowait(error)

    def _fail(self, error: MacpError) -> None:
        """The socket cannot go on: every waiting caller and reader gets `error`."""
        self._failure = self._failure or error
        self._connected.set()  # senders stop waiting; `_request` raises the failure
        for pending in self._pending.values():
            if pending.reply is not None and not pending.reply.done():
                pending.reply.set_exception(error)
        for following in self._following.values():
            following.queue.put_nowait(error)
