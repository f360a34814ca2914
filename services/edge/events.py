"""Conversation events and ConverseRequests as JSON, the same on the WebSocket (services/edge/ws/) and
on SSE and chat completions (services/edge/rest/): one event document, one way to name a request's
protovalidate violations by the fields the client sent."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import protovalidate
from google.protobuf import json_format
from google.protobuf.message import Message
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def event_document(event: pb.ConversationEvent) -> dict[str, Any]:
    """A ConversationEvent in the proto3 JSON mapping with the proto's field names (as the docs
    show them), enums by name, int64 as strings, and no defaulted fields left out."""
    return json_format.MessageToDict(
        event, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def payload_kind(event: pb.ConversationEvent) -> str:
    """The event's payload field name (`token_delta`, `round_completed`, ...), or `unknown`."""
    return event.WhichOneof("payload") or "unknown"


def violations(message: Message, names: Mapping[str, str]) -> str | None:
    """Every protovalidate violation of `message` as one line naming the fields as the client
    sent them: the proto's names, renamed by `names`."""
    found = protovalidate.collect_violations(message)
    if not found:
        return None
    parts = []
    for violation in found:
        proto = violation.proto
        elements = [element.field_name for element in (proto.field.elements if proto.field else [])]
        # Drop the oneof member (`user_message.text` is the frame's `text`).
        if len(elements) > 1 and elements[0] in ("join", "user_message", "bid", "cancel"):
            elements = elements[1:]
        path = ".".join(names.get(name, name) for name in elements) or "(frame)"
        parts.append(f"{path}: {proto.message}")
    return "; ".join(parts)
