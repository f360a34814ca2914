"""Usage events as the metering service records them: decoded, validated, flattened to a row."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime

from google.protobuf.message import DecodeError
from macp.common.v1 import usage_pb2

from services.metering.periods import billing_month
from services.runtime.interceptors import violations_message

UsageEvent = usage_pb2.UsageEvent


class MalformedEvent(ValueError):
    """A record that is not a valid UsageEvent; the message is the reason the dead letter carries."""


@dataclass(frozen=True)
class EventRow:
    """One event, flattened in the column order of metering_usage_events (without record_time)."""

    event_id: uuid.UUID
    tenant_id: str
    user_id: str
    agent_id: str
    conversation_id: str
    turn_id: str
    event_type: int
    event_time: datetime
    billing_month: date
    input_tokens: int
    output_tokens: int
    duration_ms: int
    audio_seconds: float
    storage_mb: float
    provider: str
    model: str
    estimated: bool
    payload: bytes

    def as_tuple(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in COLUMNS)


COLUMNS = tuple(EventRow.__dataclass_fields__)


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


def validated_row(event: UsageEvent) -> EventRow:
    """`event` as a row, once it passes its protovalidate constraints (MalformedEvent names them)."""
    problem = violations_message(event)
    if problem is not None:
        raise MalformedEvent(f"invalid UsageEvent: {problem}")
    dims = event.dimensions
    moment = event.time.ToDatetime(tzinfo=UTC)
    return EventRow(
        event_id=uuid.UUID(event.event_id),
        tenant_id=event.tenant_id,
        user_id=event.user_id,
        agent_id=event.agent_id,
        conversation_id=event.conversation_id,
        turn_id=event.turn_id,
        event_type=event.type,
        event_time=moment,
        billing_month=billing_month(moment),
        input_tokens=dims.input_tokens,
        output_tokens=dims.output_tokens,
        duration_ms=dims.duration_ms,
        audio_seconds=dims.audio_seconds,
        storage_mb=dims.storage_mb,
        provider=dims.provider,
        model=dims.model,
        estimated=dims.estimated,
        payload=event.SerializeToString(deterministic=True),
    )
