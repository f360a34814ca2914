"""A conversation event as the JSON every outside reader of it gets: the edge's WebSocket frames and
server-sent events, and the orchestrator's webhook deliveries (one document, so a receiver reads
the same fields wherever an event reached it)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb


def event_document(event: pb.ConversationEvent) -> dict[str, Any]:
    """A ConversationEvent in the proto3 JSON mapping with the proto's field names (as the docs
    show them), enums by name, int64 as strings, and no defaulted fields left out."""
    return json_format.MessageToDict(
        event, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def payload_kind(event: pb.ConversationEvent) -> str:
    """The event's payload field name (`token_delta`, `round_completed`, ...), or `unknown`."""
    return event.WhichOneof("payload") or "unknown"
