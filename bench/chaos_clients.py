"""The chaos run's WebSocket clients: one-agent rounds back to back, surviving whatever breaks.

Each client owns one conversation and one connection to Envoy's front listener. It sends a
message, waits for that message's `round_completed`, and sends the next. What it does when the
stack breaks under it is what a careful real client does (docs/websocket.md):

- the socket drops: reconnect, resubscribe with the last event id it saw (nothing missed, nothing
  repeated), and send again, with the same message id, a message whose `message_accepted` it never
  saw (the orchestrator stores a message once by its id);
- the conversation's stream ends (an error frame with `subscribed: false`): resubscribe the same way;
- the action was refused (an error event outside the log) or nothing confirms it for a while:
  send it again, same id.

It records every event frame it receives (id, kind, payload, when) for the checks afterwards, and
marks itself hung when no event arrived for `hang_seconds` while `macp up` was running.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

PROMPT = "Say something short about resilience."
RECONNECT_PAUSE_SECONDS = 0.25
RESEND_SECONDS = 5.0  # a message not confirmed by then is sent again (same id)
RESUBSCRIBE_PAUSE_SECONDS = 0.5
OPEN_TIMEOUT_SECONDS = 10.0
UNAUTHENTICATED = 4401
COMPLETED = "TURN_OUTCOME_COMPLETED"
FAILED = "TURN_OUTCOME_FAILED"

TokenSource = Callable[[bool], Awaitable[str]]  # (fresh) -> an access token for the edge


@dataclass(frozen=True)
class Received:
    """One event frame as a client got it."""

    event_id: str
    kind: str
    received: float  # wall clock on arrival
    time: float  # the event's own time (wall clock when the orchestrator appended it)
    payload: dict[str, Any]


def event_time(frame: dict[str, Any]) -> float:
    """The `time` of an event frame's event as a POSIX timestamp (0 when absent)."""
    stamp = frame.get("event", {}).get("time")
    if not stamp:
        return 0.0
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def received_of(frame: dict[str, Any]) -> Received:
    kind = str(frame.get("kind", ""))
    return Received(
        event_id=str(frame.get("event_id") or ""),
        kind=kind,
        received=time.time(),
        time=event_time(frame),
        payload=dict(frame.get("event", {}).get(kind) or {}),
    )


@dataclass
class Hang:
    """One silence of at least hang_seconds while a round was awaited and `macp up` ran."""

    began: float  # wall clock of the last event (or reconnect) before the silence
    until: float  # wall clock when it was last seen still silent
    message_id: str
    accepted: bool
    last_event: str  # kind and id of the last event before it

    def note(self, client: int, conversation_id: str) -> str:
        return (
            f"client {client} (conversation {conversation_id}) hung: no event for at least "
            f"{self.until - self.began:.0f} s, waiting for the round of message {self.message_id} "
            f"(accepted: {self.accepted}); last event before: {self.last_event}"
        )


@dataclass
class ClientRecord:
    """What one client saw and did, for the checks."""

    index: int
    conversation_id: str
    events: list[Received] = field(default_factory=list)
    edge_errors: list[dict[str, Any]] = field(default_factory=list)  # `type: error` frames
    sent: list[str] = field(default_factory=list)  # message ids, first sends only
    resends: int = 0
    reconnects: int = 0
    resubscribes: int = 0
    rounds: int = 0  # round_completed of its own messages
    hangs: list[Hang] = field(default_factory=list)
    unfinished: str | None = None  # the message still waiting for its round when the run ended

    def completed_turn_times(self) -> list[float]:
        """Event times of every turn_completed with outcome COMPLETED."""
        return [
            e.time
            for e in self.events
            if e.kind == "turn_completed" and e.payload.get("outcome") == COMPLETED
        ]

    def event_ids(self) -> list[str]:
        return [e.event_id for e in self.events if e.event_id]

    def errors_without_id(self) -> list[Received]:
        return [e for e in self.events if e.kind == "error" and not e.event_id]

    def completed_then_failed(self) -> list[str]:
        """Turn ids this client saw end COMPLETED and later FAILED."""
        completed: set[str] = set()
        flipped: list[str] = []
        for event in self.events:
            if event.kind != "turn_completed":
                continue
            turn = str(event.payload.get("turn_id", ""))
            outcome = event.payload.get("outcome")
            if outcome == COMPLETED:
                completed.add(turn)
            elif outcome == FAILED and turn in completed:
                flipped.append(turn)
        return flipped


@dataclass
class _Pending:
    message_id: str
    accepted: bool = False
    last_sent: float = 0.0  # monotonic


class ChaosClient:
    """One client's loop (see the module docstring), until `close`."""

    def __init__(
        self,
        record: ClientRecord,
        ws_base: str,
        token: TokenSource,
        stack_up: Callable[[], bool],
        *,
        hang_seconds: float,
    ) -> None:
        self.record = record
        self._ws_base = ws_base
        self._token = token
        self._stack_up = stack_up
        self._hang_seconds = hang_seconds
        self._last_event_id = "0-0"  # the conversation is new: its whole log is this client's
        self._seen: set[str] = set()
        self._pending: _Pending | None = None
        self._stopping = asyncio.Event()
        self._closing = asyncio.Event()
        self.idle = asyncio.Event()  # set once stopped and no round is awaited any more
        self._quiet_since = time.monotonic()  # last event frame, or last (re)connect
        self._hang: Hang | None = None  # the silence going on, once it counts as a hang
        # While a subscribe is in flight, event frames from the stream it replaces are dropped:
        # the new stream replays them from the last id (else they would count twice).
        self._awaiting_subscribed: str | None = None
        self._resubscribe_due = 0.0  # monotonic; 0 when none is due

    @property
    def waiting_for(self) -> str | None:
        """The message id whose round this client still waits for, if any."""
        return self._pending.message_id if self._pending is not None else None

    def stop(self) -> None:
        """Send no new message; the round in flight goes on, and the client keeps listening."""
        self._stopping.set()
        if self._pending is None:
            self.idle.set()

    def close(self) -> None:
        """End `run`: the client closes its connection."""
        self._closing.set()

    async def run(self) -> None:
        fresh = False
        while not self._closing.is_set():
            try:
                token = await self._token(fresh)
            except Exception:  # the token service or the edge is down: try again shortly
                await asyncio.sleep(RECONNECT_PAUSE_SECONDS * 4)
                continue
            fresh = False
            try:
                async with websockets.connect(
                    f"{self._ws_base}?access_token={token}",
                    max_size=None,
                    open_timeout=OPEN_TIMEOUT_SECONDS,
                ) as ws:
                    await self._session(ws)
                    return
            except ConnectionClosed as closed:
                fresh = closed.rcvd is not None and closed.rcvd.code == UNAUTHENTICATED
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError):
                pass
            self.record.reconnects += 1
            self._watch_hang()
            await asyncio.sleep(RECONNECT_PAUSE_SECONDS)

    async def _session(self, ws: Any) -> None:
        """One connection: subscribe from the last id, then rounds until stopped."""
        await self._subscribe(ws)
        if self._pending is not None and not self._pending.accepted:
            await self._send(ws, resend=True)
        while not self._closing.is_set():
            if self._pending is None and not self._stopping.is_set():
                self._pending = _Pending(str(uuid.uuid4()))
                self.record.sent.append(self._pending.message_id)
                await self._send(ws, resend=False)
            try:
                text = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                text = None
            if text is not None:
                await self._on_frame(ws, json.loads(text))
            await self._housekeeping(ws)

    async def _housekeeping(self, ws: Any) -> None:
        now = time.monotonic()
        if self._resubscribe_due and now >= self._resubscribe_due:
            self._resubscribe_due = 0.0
            self.record.resubscribes += 1
            await self._subscribe(ws)
            if self._pending is not None and not self._pending.accepted:
                await self._send(ws, resend=True)
        pending = self._pending
        if pending is not None and not pending.accepted and now - pending.last_sent > RESEND_SECONDS:
            await self._send(ws, resend=True)
        if self._watch_hang():
            # Nudge: a fresh stream from the last id, and the message again; the hang is recorded.
            self._resubscribe_due = now

    def _watch_hang(self) -> bool:
        """Records a hang when no event came for hang_seconds while a round was awaited."""
        now = time.monotonic()
        if (self._pending is None and self._stopping.is_set()) or not self._stack_up():
            self._quiet_since = now
            return False
        if now - self._quiet_since < self._hang_seconds:
            return False
        wall = time.time()
        if self._hang is None:  # a new silence; a longer one only extends it
            pending = self._pending
            last = self.record.events[-1] if self.record.events else None
            self._hang = Hang(
                began=wall - (now - self._quiet_since),
                until=wall,
                message_id=pending.message_id if pending else "-",
                accepted=pending.accepted if pending else False,
                last_event=f"{last.kind} {last.event_id}" if last else "none",
            )
            self.record.hangs.append(self._hang)
        self._hang.until = wall
        self._quiet_since = now
        return True

    async def _subscribe(self, ws: Any) -> None:
        request_id = f"sub-{uuid.uuid4().hex[:12]}"
        self._awaiting_subscribed = request_id
        frame = {
            "action": "subscribe",
            "conversation_id": self.record.conversation_id,
            "last_event_id": self._last_event_id,
            "request_id": request_id,
        }
        await ws.send(json.dumps(frame))

    async def _send(self, ws: Any, *, resend: bool) -> None:
        pending = self._pending
        assert pending is not None
        if resend:
            self.record.resends += 1
        pending.last_sent = time.monotonic()
        frame = {
            "action": "message",
            "conversation_id": self.record.conversation_id,
            "message_id": pending.message_id,
            "text": PROMPT,
        }
        await ws.send(json.dumps(frame))

    async def _on_frame(self, ws: Any, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "event":
            if self._awaiting_subscribed is not None:
                return  # from the stream being replaced; the new one replays it
            self._on_event(frame)
        elif kind == "subscribed":
            if frame.get("request_id") == self._awaiting_subscribed:
                self._awaiting_subscribed = None
        elif kind == "error":
            self.record.edge_errors.append(frame)
            subscribe_failed = frame.get("action") == "subscribe" and (
                frame.get("request_id") == self._awaiting_subscribed or frame.get("subscribed") is False
            )
            if subscribe_failed or frame.get("subscribed") is False:
                # The stream ended (or never opened): follow again from the last id, shortly.
                self._awaiting_subscribed = None
                self._resubscribe_due = time.monotonic() + RESUBSCRIBE_PAUSE_SECONDS
            elif frame.get("action") == "message" and self._pending is not None:
                self._pending.last_sent = time.monotonic() - RESEND_SECONDS + 1.0  # again in 1 s

    def _on_event(self, frame: dict[str, Any]) -> None:
        event = received_of(frame)
        self.record.events.append(event)
        self._quiet_since = time.monotonic()
        self._hang = None
        if event.event_id:
            self._seen.add(event.event_id)
            self._last_event_id = event.event_id
        pending = self._pending
        if pending is None:
            return
        if event.kind == "message_accepted" and event.payload.get("message_id") == pending.message_id:
            pending.accepted = True
        elif event.kind == "error" and not event.event_id and not pending.accepted:
            # A refused action (outside the log): the orchestrator asks for it again.
            pending.last_sent = time.monotonic() - RESEND_SECONDS + 1.0
        elif (
            event.kind == "round_completed" and event.payload.get("trigger_message_id") == pending.message_id
        ):
            self.record.rounds += 1
            self._pending = None
            if self._stopping.is_set():
                self.idle.set()


class LogReadError(Exception):
    """The conversation's log could not be read from its first event."""


async def read_full_log(
    ws_base: str, token: str, conversation_id: str, quiet_seconds: float
) -> list[Received]:
    """Every event of a conversation from its first, through the WebSocket API (subscribe with
    last_event_id 0-0), until the stream has been quiet for `quiet_seconds`."""
    events: list[Received] = []
    async with websockets.connect(
        f"{ws_base}?access_token={token}", max_size=None, open_timeout=OPEN_TIMEOUT_SECONDS
    ) as ws:
        frame = {"action": "subscribe", "conversation_id": conversation_id, "last_event_id": "0-0"}
        await ws.send(json.dumps(frame))
        while True:
            try:
                text = await asyncio.wait_for(ws.recv(), quiet_seconds)
            except TimeoutError:
                return events
            document = json.loads(text)
            if document.get("type") == "event":
                events.append(received_of(document))
            elif document.get("type") == "error":
                raise LogReadError(
                    f"reading conversation {conversation_id} from its start failed: {document}"
                )
