"""A conversation's events, the same on the WebSocket, on SSE and in a replay (docs/websocket.md).

Every event is one of the conversation's log: it names its conversation, has its log id
(`<ms>-<seq>`, the same for every client and every replay) and its time. The payload is the
`macp.orchestrator.v1.ConversationEvent` in the proto3 JSON mapping with the proto's field names
(snake_case, unlike REST), enums by name, 64-bit integers as strings.

`Event` keeps the payload typed by kind: `event.token_delta` is the `TokenDelta` when the event is
one and None otherwise, so a caller narrows with one `is not None` and mypy follows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NotRequired, TypeAlias, TypedDict, cast

EventKind: TypeAlias = Literal[
    "message_accepted",
    "bidding_opened",
    "bid_results",
    "turn_started",
    "token_delta",
    "tool_call_started",
    "tool_call_completed",
    "turn_completed",
    "usage",
    "error",
    "round_completed",
]


class MessageAccepted(TypedDict):
    message_id: str
    sequence: str
    duplicate: bool
    queue_position: int


class BiddingOpened(TypedDict):
    turn_id: str
    agent_ids: list[str]
    deadline: NotRequired[str]


class Bid(TypedDict):
    agent_id: str
    score: float
    declined: bool
    rationale: str
    estimated_cost_micros: str
    source: str


class BidResults(TypedDict):
    turn_id: str
    bids: list[Bid]
    winner_agent_id: str


class TurnStarted(TypedDict):
    turn_id: str
    agent_id: str
    trigger_message_id: str
    turn_index: int


class TokenDelta(TypedDict):
    turn_id: str
    agent_id: str
    text: str
    index: int


class TurnCompleted(TypedDict):
    turn_id: str
    agent_id: str
    outcome: str
    message_id: str
    text: str


class UsageDimensions(TypedDict):
    input_tokens: str
    output_tokens: str
    duration_ms: str
    audio_seconds: float
    storage_mb: float
    provider: str
    model: str
    estimated: bool
    tool_server: str
    tool: str
    result_bytes: str


class Actor(TypedDict):
    type: str
    id: str
    client_id: str
    scopes: list[str]


class UsageRecord(TypedDict):
    event_id: str
    time: NotRequired[str]
    tenant_id: str
    user_id: str
    agent_id: str
    conversation_id: str
    turn_id: str
    type: str
    dimensions: NotRequired[UsageDimensions]
    actor_chain: list[Actor]


class FieldViolation(TypedDict):
    field: str
    rule_id: str
    description: str


class ErrorDetail(TypedDict):
    reason: str
    domain: str
    message: str
    metadata: dict[str, str]
    retry_after: NotRequired[str]
    field_violations: list[FieldViolation]


class ErrorEvent(TypedDict):
    code: int
    detail: NotRequired[ErrorDetail]
    turn_id: str
    fatal: bool


class RoundCompleted(TypedDict):
    trigger_message_id: str
    turn_count: int
    reason: str


class ToolCallStarted(TypedDict):
    turn_id: str
    agent_id: str
    tool_call_id: str
    name: str
    arguments: NotRequired[dict[str, object]]


class ToolCallCompleted(TypedDict):
    turn_id: str
    agent_id: str
    tool_call_id: str
    name: str
    result: str
    result_truncated: bool
    is_error: bool
    error: NotRequired[ErrorDetail]
    duration_ms: str
    message_id: str


Payload: TypeAlias = (
    MessageAccepted
    | BiddingOpened
    | BidResults
    | TurnStarted
    | TokenDelta
    | TurnCompleted
    | UsageRecord
    | ErrorEvent
    | RoundCompleted
    | ToolCallStarted
    | ToolCallCompleted
)

_ENVELOPE = frozenset({"event_id", "conversation_id", "time"})
_EVENT_ID = re.compile(r"(\d{1,20})-(\d{1,20})")


def event_position(event_id: str) -> tuple[int, int]:
    """Where an event id lies in its conversation's log, for ordering (ValueError if it is none)."""
    match = _EVENT_ID.fullmatch(event_id)
    if match is None:
        raise ValueError(f"event_id: {event_id!r} is not a log id (<ms>-<seq>)")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class Event:
    """One event of a conversation's log.

    kind: the payload's kind (`token_delta`, ...; `EventKind` names those this client knows: one
    it does not know yet arrives too, with its payload untyped).
    document: the whole event as it came, for what the typed view leaves out.
    """

    event_id: str
    conversation_id: str
    time: str
    kind: str
    payload: Mapping[str, object]
    document: Mapping[str, object] = field(repr=False)

    @property
    def position(self) -> tuple[int, int]:
        return event_position(self.event_id)

    def _payload(self, kind: EventKind) -> object | None:
        return self.payload if self.kind == kind else None

    @property
    def message_accepted(self) -> MessageAccepted | None:
        return cast("MessageAccepted | None", self._payload("message_accepted"))

    @property
    def bidding_opened(self) -> BiddingOpened | None:
        return cast("BiddingOpened | None", self._payload("bidding_opened"))

    @property
    def bid_results(self) -> BidResults | None:
        return cast("BidResults | None", self._payload("bid_results"))

    @property
    def turn_started(self) -> TurnStarted | None:
        return cast("TurnStarted | None", self._payload("turn_started"))

    @property
    def token_delta(self) -> TokenDelta | None:
        return cast("TokenDelta | None", self._payload("token_delta"))

    @property
    def tool_call_started(self) -> ToolCallStarted | None:
        return cast("ToolCallStarted | None", self._payload("tool_call_started"))

    @property
    def tool_call_completed(self) -> ToolCallCompleted | None:
        return cast("ToolCallCompleted | None", self._payload("tool_call_completed"))

    @property
    def turn_completed(self) -> TurnCompleted | None:
        return cast("TurnCompleted | None", self._payload("turn_completed"))

    @property
    def usage(self) -> UsageRecord | None:
        return cast("UsageRecord | None", self._payload("usage"))

    @property
    def error(self) -> ErrorEvent | None:
        return cast("ErrorEvent | None", self._payload("error"))

    @property
    def round_completed(self) -> RoundCompleted | None:
        return cast("RoundCompleted | None", self._payload("round_completed"))

    def ends_round_of(self, message_id: str) -> bool:
        """Whether this event ends the round of user message `message_id`: its RoundCompleted, or
        a fatal error (after which the stream ends)."""
        done = self.round_completed
        if done is not None:
            return done["trigger_message_id"] == message_id
        failed = self.error
        return failed is not None and failed["fatal"]


def parse_event(document: Mapping[str, object]) -> Event:
    """The `Event` of a ConversationEvent document (an SSE `data:` or a WebSocket frame's `event`)."""
    event_id = document.get("event_id")
    conversation_id = document.get("conversation_id")
    if not isinstance(event_id, str) or not isinstance(conversation_id, str):
        raise ValueError("an event without event_id or conversation_id")
    kind, payload = "unknown", {}
    for name, value in document.items():
        # The payload is the one member that is an object besides the envelope's (a oneof).
        if name not in _ENVELOPE and isinstance(value, dict):
            kind, payload = name, value
            break
    time = document.get("time")
    return Event(event_id, conversation_id, time if isinstance(time, str) else "", kind, payload, document)


class Cursor:
    """Where a client is in one conversation's log: the last event it was given. Resuming asks
    for the events after it; `admit` turns away any event at or before it, so that an overlap
    between a replay and what was already delivered is never delivered twice."""

    def __init__(self, last_event_id: str | None = None) -> None:
        self.last_event_id = last_event_id
        self._position = None if last_event_id is None else event_position(last_event_id)
        self.repeats = 0  # events turned away as already delivered

    def admit(self, event: Event) -> bool:
        position = event.position
        if self._position is not None and position <= self._position:
            self.repeats += 1
            return False
        self._position, self.last_event_id = position, event.event_id
        return True
