"""Usage events for the metering tests: valid ones, and records that are not valid events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from macp.common.v1 import usage_pb2

MODELS = ("echo-1", "claude-sonnet-4-5", "gpt-4o")


def agent_turn(
    tenant_id: str,
    *,
    user_id: str = "u-1",
    agent_id: str | None = None,
    conversation_id: str | None = None,
    model: str = "echo-1",
    input_tokens: int = 10,
    output_tokens: int = 20,
    time: datetime | None = None,
) -> usage_pb2.UsageEvent:
    event = usage_pb2.UsageEvent(
        event_id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        user_id=user_id,
        agent_id=agent_id or str(uuid.uuid4()),
        conversation_id=conversation_id or str(uuid.uuid4()),
        turn_id=str(uuid.uuid4()),
        type=usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN,
        dimensions=usage_pb2.UsageDimensions(
            input_tokens=input_tokens, output_tokens=output_tokens, provider="local", model=model
        ),
    )
    event.time.FromDatetime(time or datetime.now(UTC))
    return event


def malformed(index: int) -> bytes:
    """Three kinds of bad record, in turn: not protobuf at all, an event failing validation
    (no event id), and an empty value."""
    kind = index % 3
    if kind == 0:
        return b"\xff\xfe not a protobuf " + str(index).encode()
    if kind == 1:
        event = usage_pb2.UsageEvent(tenant_id="t-bad", type=usage_pb2.USAGE_EVENT_TYPE_API_CALL)
        event.time.FromDatetime(datetime.now(UTC))
        event.dimensions.duration_ms = index
        return event.SerializeToString()
    return b""


def other_event(
    tenant_id: str,
    event_type: usage_pb2.UsageEventType.ValueType,
    *,
    audio_seconds: float = 0,
    storage_mb: float = 0,
) -> usage_pb2.UsageEvent:
    """An event of `event_type` with only what that type measures."""
    event = usage_pb2.UsageEvent(
        event_id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        type=event_type,
        dimensions=usage_pb2.UsageDimensions(audio_seconds=audio_seconds, storage_mb=storage_mb),
    )
    event.time.FromDatetime(datetime.now(UTC))
    return event
