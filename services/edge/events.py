"""Conversation events and ConverseRequests as JSON, the same on the WebSocket (services/edge/ws/) and
on SSE and chat completions (services/edge/rest/): one event document, one way to name a request's
protovalidate violations by the fields the client sent."""

from __future__ import annotations

import json
import re
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


# A conversation's event ids are its log's (a Redis stream's): `<ms>-<seq>`, each part below 2^64.
_EVENT_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_EVENT_ID_PART_MAX = 2**64 - 1


def preceding_event_id(event_id: str) -> str:
    """The id just before `event_id` in its conversation's log, so that following the log after it
    starts with that very event as the log holds it (its time included). ValueError for an id
    that is not a log id."""
    match = _EVENT_ID.fullmatch(event_id)
    if match is None or max(int(part) for part in match.groups()) > _EVENT_ID_PART_MAX:
        raise ValueError(f"event_id: {event_id!r} is not an event id of a conversation's log (<ms>-<seq>)")
    ms, seq = int(match.group(1)), int(match.group(2))
    if seq > 0:
        return f"{ms}-{seq - 1}"
    if ms == 0:
        raise ValueError("event_id: '0-0' has no event before it")
    return f"{ms - 1}-{_EVENT_ID_PART_MAX}"


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
