"""Usage events as the metering service records them: decoded, checked, flattened to a row.

A row is a plain tuple in the column order of the staging table (`STAGED_COLUMNS`), as cheap to
build as Python allows: the ingest path makes one per event, tens of thousands a second. The event
id stays text (asyncpg encodes it into a uuid column itself) and the time stays seconds and
microseconds; Postgres turns them into the timestamp and billing month (see store/ingest.py).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from macp.common.v1 import usage_pb2

from services.metering import event_rules

UsageEvent = usage_pb2.UsageEvent
# id, tenant, user, agent, conversation, turn, type, seconds, micros, input and output tokens,
# duration, audio seconds, storage MB, provider, model, estimated, payload.
StagedRow = tuple[
    str, str, str, str, str, str, int, int, int, int, int, int, float, float, str, str, bool, bytes
]

# The staging table's columns, in the order of a StagedRow.
STAGED_COLUMNS = (
    "event_id",
    "tenant_id",
    "user_id",
    "agent_id",
    "conversation_id",
    "turn_id",
    "event_type",
    "event_seconds",
    "event_micros",
    "input_tokens",
    "output_tokens",
    "duration_ms",
    "audio_seconds",
    "storage_mb",
    "provider",
    "model",
    "estimated",
    "payload",
)


class MalformedEvent(ValueError):
    """A record that is not a valid UsageEvent; the message is the reason the dead letter carries."""


def decode(value: bytes | None) -> UsageEvent:
    """The event a Kafka record's value holds; MalformedEvent says why it is not one."""
    if not value:
        raise MalformedEvent("empty record value; expected a serialized macp.common.v1.UsageEvent")
    event = UsageEvent()
    try:
        event.ParseFromString(value)
    except DecodeError as exc:
        raise MalformedEvent(f"not a serialized macp.common.v1.UsageEvent: {exc}") from None
    return event


def staged_row(event: UsageEvent, payload: bytes) -> StagedRow:
    """`event` as a row once it passes its constraints (MalformedEvent names those it breaks).

    `payload` is the serialized event as stored: the record's own value on the consumer path, so
    that it is not serialized again."""
    if not event_rules.accepts(event):
        raise MalformedEvent(f"invalid UsageEvent: {event_rules.reason(event)}")
    d = event.dimensions
    time = event.time
    return (
        event.event_id,
        event.tenant_id,
        event.user_id,
        event.agent_id,
        event.conversation_id,
        event.turn_id,
        event.type,
        time.seconds,
        time.nanos // 1000,  # Postgres keeps microseconds; protobuf's ToDatetime truncates alike
        d.input_tokens,
        d.output_tokens,
        d.duration_ms,
        d.audio_seconds,
        d.storage_mb,
        d.provider,
        d.model,
        d.estimated,
        payload,
    )


def row_of_record(value: bytes | None) -> StagedRow:
    """The row of a Kafka record's value; MalformedEvent if it is not a valid UsageEvent."""
    event = decode(value)
    return staged_row(event, value or b"")  # decode refused an empty value


def row_of_event(event: UsageEvent) -> StagedRow:
    """The row of an event received in a request (Commit): stored in its deterministic form."""
    return staged_row(event, event.SerializeToString(deterministic=True))
