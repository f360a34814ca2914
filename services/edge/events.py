"""Conversation events and ConverseRequests as JSON, the same on the WebSocket (services/edge/ws/) and
on SSE and chat completions (services/edge/rest/): one way to write a frame, to step back from an
event id, and to name a request's protovalidate violations by the fields the client sent. The
event document itself is the runtime's (services/runtime/event_documents.py): webhooks send it too."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import protovalidate
from google.protobuf.message import Message


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


# A conversation's event ids are its log's (a Redis stream's): `<ms>-<seq>`, each part below 2^64.
_EVENT_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_EVENT_ID_PART_MAX = 2**64 - 1


def event_position(event_id: str) -> tuple[int, int]:
    """Where `event_id` stands in its conversation's log, to compare two ids (ValueError for an id
    that is not a log id)."""
    match = _EVENT_ID.fullmatch(event_id)
    if match is None:
        raise ValueError(f"event_id: {event_id!r} is not an event id of a conversation's log (<ms>-<seq>)")
    return int(match.group(1)), int(match.group(2))


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
        if elements and elements[0] in ("join", "user_message", "bid", "cancel", "utterance"):
            elements = elements[1:]
            if not elements:  # a rule of the whole member, whose message names its own field
                parts.append(proto.message)
                continue
        path = ".".join(names.get(name, name) for name in elements) or "(frame)"
        parts.append(f"{path}: {proto.message}")
    return "; ".join(parts)
