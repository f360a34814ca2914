"""The chaos run's books, read from the real stores once the load has stopped and the stack is quiet.

- Postgres, the conversation service's `conversation_messages` (role 2 = agent, 1 = user) and
  metering's `metering_usage_events` (event_type 1 = AGENT_TURN, 2 = ORCHESTRATION);
- Redis, metering's quota holds: `<prefix>metering:{<tenant>}:hold:<reservation>` hashes whose
  `state` is `open` (services/metering/quota_scripts.py);
- the conversations' event logs, read in full from their first event through the WebSocket API,
  and what each client received.

Every check compares counts that must be equal whatever broke: each agent answer stored is one
metered turn, each round that ran one metered orchestration, no hold outlives its turn, no user
message is answered twice, no turn ends COMPLETED and then FAILED, and an error event always has
its place in the log (an event id).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis

from bench.chaos_clients import ClientRecord, Received

ROLE_USER = 1
ROLE_AGENT = 2
AGENT_TURN = 1
ORCHESTRATION = 2
KEY_PREFIX = "macp:"
# Usage held back by a crash reaches metering within 10 s of the part's recovery, which the
# supervisor brings back within 5 s: no usage event may take longer than both together.
USAGE_DELAY_LIMIT_SECONDS = 15.0  # MACP_REDIS_KEY_PREFIX's default, which `macp up` keeps


@dataclass(frozen=True)
class StoredMessage:
    conversation_id: str
    message_id: str
    sequence: int
    role: int
    turn_id: str


@dataclass(frozen=True)
class UsageRow:
    conversation_id: str
    event_type: int
    turn_id: str
    # From the event's own time (when its turn or round was settled) to metering's record of it.
    delay_seconds: float


@dataclass
class Books:
    """What the stores hold for the run's conversations, and every discrepancy found."""

    agent_answers: int = 0
    agent_turn_events: int = 0
    answers_not_metered: list[str] = field(default_factory=list)  # turn ids
    metered_not_answered: list[str] = field(default_factory=list)  # turn ids
    orchestration_events: int = 0
    rounds: int = 0  # distinct user messages whose round ended (a round_completed)
    open_holds: list[str] = field(default_factory=list)  # hold keys still `open`
    answered_twice: dict[str, int] = field(default_factory=dict)  # user message id -> agent answers
    completed_then_failed: list[str] = field(default_factory=list)  # "client <i>: turn <id>"
    errors_without_id: int = 0
    error_events: int = 0
    usage_delay_max: float = 0.0  # seconds, the longest any usage event took to reach metering

    @property
    def failures(self) -> list[str]:
        found = []
        if (
            self.agent_answers != self.agent_turn_events
            or self.answers_not_metered
            or self.metered_not_answered
        ):
            found.append(
                f"stored agent answers {self.agent_answers} != metered AGENT_TURN events "
                f"{self.agent_turn_events} (answers not metered: {len(self.answers_not_metered)}, "
                f"metered turns without an answer: {len(self.metered_not_answered)})"
            )
        if self.orchestration_events != self.rounds:
            found.append(f"ORCHESTRATION events {self.orchestration_events} != rounds {self.rounds}")
        if self.open_holds:
            found.append(f"{len(self.open_holds)} quota holds still open")
        if self.answered_twice:
            found.append(f"{len(self.answered_twice)} user messages answered more than once")
        if self.completed_then_failed:
            found.append(f"{len(self.completed_then_failed)} turns went from COMPLETED to FAILED")
        if self.errors_without_id:
            found.append(f"{self.errors_without_id} of {self.error_events} error events had no event id")
        if self.usage_delay_max > USAGE_DELAY_LIMIT_SECONDS:
            found.append(
                f"a usage event took {self.usage_delay_max:.1f} s to reach metering "
                f"(limit {USAGE_DELAY_LIMIT_SECONDS:g} s)"
            )
        return found

    def samples(self, count: int = 5) -> list[str]:
        """A few of each discrepancy by id, for whoever looks into it."""
        found = []
        for label, ids in (
            ("answers not metered (turn ids)", self.answers_not_metered),
            ("metered turns without an answer (turn ids)", self.metered_not_answered),
            ("open holds", self.open_holds),
            ("messages answered twice", [f"{m} x{n}" for m, n in self.answered_twice.items()]),
            ("COMPLETED then FAILED", self.completed_then_failed),
        ):
            if ids:
                found.append(f"  {label}: {', '.join(ids[:count])}" + (" ..." if len(ids) > count else ""))
        return found

    def line(self) -> str:
        verdict = "OK" if not self.failures else "FAILED: " + "; ".join(self.failures)
        return (
            f"books: agent answers {self.agent_answers}, AGENT_TURN events {self.agent_turn_events}; "
            f"rounds {self.rounds}, ORCHESTRATION events "
            f"{self.orchestration_events}; open holds {len(self.open_holds)}; messages answered twice "
            f"{len(self.answered_twice)}; COMPLETED→FAILED turns {len(self.completed_then_failed)}; "
            f"error events without id {self.errors_without_id}/{self.error_events}; usage delay at most "
            f"{self.usage_delay_max:.1f} s — {verdict}"
        )


async def stored_messages(postgres_url: str, conversation_ids: Sequence[str]) -> list[StoredMessage]:
    connection = await asyncpg.connect(postgres_url)
    try:
        rows = await connection.fetch(
            "SELECT conversation_id::text AS conversation_id, id::text AS id, sequence, role, "
            "coalesce(turn_id::text, '') AS turn_id FROM conversation_messages "
            "WHERE conversation_id = ANY($1::uuid[]) ORDER BY conversation_id, sequence",
            list(conversation_ids),
        )
    finally:
        await connection.close()
    return [
        StoredMessage(r["conversation_id"], r["id"], int(r["sequence"]), int(r["role"]), r["turn_id"])
        for r in rows
    ]


async def usage_rows(postgres_url: str, conversation_ids: Sequence[str]) -> list[UsageRow]:
    connection = await asyncpg.connect(postgres_url)
    try:
        rows = await connection.fetch(
            "SELECT conversation_id, event_type, turn_id, "
            "extract(epoch FROM record_time - event_time)::float8 AS delay FROM metering_usage_events "
            "WHERE conversation_id = ANY($1::text[]) AND event_type = ANY($2::smallint[])",
            list(conversation_ids),
            [AGENT_TURN, ORCHESTRATION],
        )
    finally:
        await connection.close()
    return [
        UsageRow(r["conversation_id"], int(r["event_type"]), r["turn_id"], float(r["delay"])) for r in rows
    ]


async def open_holds(redis_url: str, prefix: str = KEY_PREFIX) -> list[str]:
    """Every metering hold whose state is still `open`."""
    client = aioredis.Redis.from_url(redis_url)
    found: list[str] = []
    try:
        async for key in client.scan_iter(match=f"{prefix}metering:*:hold:*", count=500):
            state = await client.hget(key, "state")
            if state == b"open":
                found.append(key.decode())
    finally:
        await client.aclose()
    return found


def answers_per_message(messages: Sequence[StoredMessage], triggers: Mapping[str, str]) -> dict[str, int]:
    """Agent answers per user message: by the turn's trigger (its turn_started event) where the logs
    name it, else by position (the agent messages after a user message, before the next one)."""
    counts: Counter[str] = Counter()
    last_user: dict[str, str] = {}
    for message in messages:  # ordered by conversation, then sequence
        if message.role == ROLE_USER:
            last_user[message.conversation_id] = message.message_id
        elif message.role == ROLE_AGENT:
            trigger = triggers.get(message.turn_id) or last_user.get(message.conversation_id, "")
            counts[trigger] += 1
    return dict(counts)


def triggers_of(events: Iterable[Received]) -> dict[str, str]:
    """turn id -> the user message it answers, from turn_started events."""
    return {
        str(e.payload.get("turn_id")): str(e.payload.get("trigger_message_id"))
        for e in events
        if e.kind == "turn_started"
    }


async def check_books(
    postgres_url: str,
    redis_url: str,
    records: Sequence[ClientRecord],
    logs: Mapping[str, Sequence[Received]],
) -> Books:
    """The books of the run's conversations (see the module docstring)."""
    conversation_ids = [record.conversation_id for record in records]
    messages = await stored_messages(postgres_url, conversation_ids)
    usage = await usage_rows(postgres_url, conversation_ids)
    every_event: list[Received] = [e for events in logs.values() for e in events]
    every_event += [e for record in records for e in record.events]
    triggers = triggers_of(every_event)

    books = Books()
    answered = {m.turn_id for m in messages if m.role == ROLE_AGENT}
    metered = {u.turn_id for u in usage if u.event_type == AGENT_TURN}
    books.agent_answers = sum(1 for m in messages if m.role == ROLE_AGENT)
    books.agent_turn_events = sum(1 for u in usage if u.event_type == AGENT_TURN)
    books.answers_not_metered = sorted(answered - metered)
    books.metered_not_answered = sorted(metered - answered)
    books.orchestration_events = sum(1 for u in usage if u.event_type == ORCHESTRATION)
    # A round is a user message whose round ended (every round ends with one round_completed):
    # also a round that failed before any turn (its conversation could not be loaded) held and
    # used an orchestration, and is billed one.
    books.rounds = len(
        {str(e.payload.get("trigger_message_id")) for e in every_event if e.kind == "round_completed"}
    )
    books.open_holds = await open_holds(redis_url)
    books.answered_twice = {m: n for m, n in answers_per_message(messages, triggers).items() if n > 1}
    flipped: defaultdict[int, list[str]] = defaultdict(list)
    for record in records:
        flipped[record.index] += record.completed_then_failed()
    books.completed_then_failed = [f"client {i}: turn {t}" for i, turns in flipped.items() for t in turns]
    errors = [e for record in records for e in record.events if e.kind == "error"]
    books.error_events = len(errors)
    books.errors_without_id = sum(1 for e in errors if not e.event_id)
    books.usage_delay_max = max((u.delay_seconds for u in usage), default=0.0)
    return books
