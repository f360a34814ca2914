"""The JSON frames of the WebSocket API (docs/websocket.md): client frames parsed and validated into
ConverseRequests, server frames built from events and errors.

A client frame is a JSON object routed by its `action` (the platform seed's API Gateway routes by
`$request.body.action`). It is checked here completely, field types first and then the proto's
`buf.validate` constraints, before anything reaches the orchestrator: its validation interceptor
would abort the whole Converse stream (every event of the conversation) over one bad frame, while
here a bad frame costs one error frame and the connection stays.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from macp.common.v1 import audio_pb2
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.edge.events import dumps, violations
from services.edge.json_input import InvalidJson, decode_json_object
from services.runtime.context import MAX_REQUEST_ID_CHARS, is_request_id
from services.runtime.event_documents import event_document, payload_kind
from services.runtime.wav import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

# Client frame fields every action may carry besides its own: a correlation id echoed back.
COMMON_FIELDS = frozenset({"action", "request_id"})

# action -> {field: JSON type name}; the types are checked before the proto is built.
STRING, NUMBER, INTEGER, BOOLEAN, STRINGS = "string", "number", "integer", "boolean", "array of strings"
ACTION_FIELDS: dict[str, dict[str, str]] = {
    "ping": {},
    "subscribe": {"conversation_id": STRING, "last_event_id": STRING},
    "unsubscribe": {"conversation_id": STRING},
    "message": {
        "conversation_id": STRING,
        "message_id": STRING,
        "text": STRING,
        "mention_agent_ids": STRINGS,
        "speak": BOOLEAN,
    },
    # A spoken message (docs/websocket.md, "Voice"): its audio comes between start and end, in
    # binary frames or in `audio` frames (base64), and is sent to the orchestrator at the end.
    "utterance_start": {
        "conversation_id": STRING,
        "format": STRING,
        "sample_rate": INTEGER,
        "message_id": STRING,
        "language": STRING,
        "mention_agent_ids": STRINGS,
        "speak": BOOLEAN,
    },
    "audio": {"conversation_id": STRING, "audio": STRING},
    "utterance_end": {"conversation_id": STRING},
    "utterance_cancel": {"conversation_id": STRING},
    "bid": {
        "conversation_id": STRING,
        "agent_id": STRING,
        "score": NUMBER,
        "turn_id": STRING,
        "rationale": STRING,
    },
    "cancel": {"conversation_id": STRING, "turn_id": STRING, "reason": STRING},
}
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "subscribe": ("conversation_id",),
    "unsubscribe": ("conversation_id",),
    "message": ("conversation_id", "text"),
    "utterance_start": ("conversation_id", "format"),
    "audio": ("conversation_id", "audio"),
    "utterance_end": ("conversation_id",),
    "utterance_cancel": ("conversation_id",),
    "bid": ("conversation_id", "agent_id", "score"),
    "cancel": ("conversation_id",),
}
# Where a proto field's violation points in the frame: the payload's fields keep their names,
# except Join's, which the frame calls `last_event_id` (the SSE/EventSource word for it).
_FRAME_FIELD = {"after_event_id": "last_event_id", "speak_answers": "speak"}
# The actions of a spoken message: they build an utterance on the connection, and only the end
# sends anything (services/edge/ws/utterances.py).
VOICE_ACTIONS = frozenset({"utterance_start", "audio", "utterance_end", "utterance_cancel"})
AUDIO_FORMATS = {"wav": audio_pb2.AUDIO_FORMAT_WAV, "pcm": audio_pb2.AUDIO_FORMAT_PCM}


class FrameError(Exception):
    """A client frame the edge refuses itself; `message` starts with the field's name."""

    def __init__(self, code: str, message: str, action: str | None, request_id: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.action = action
        self.request_id = request_id


# (message) -> the FrameError of the frame being parsed.
Refuse = Callable[[str], FrameError]


@dataclass(frozen=True)
class ClientFrame:
    """One parsed client frame. `request` is the ConverseRequest to send (None for ping,
    unsubscribe, audio and utterance_cancel; for utterance_start, the utterance without its audio;
    for utterance_end, the request its utterance goes in); `message_id` the user message's id,
    generated when the client left it out; `audio` an `audio` frame's bytes."""

    action: str
    request_id: str | None
    conversation_id: str
    request: pb.ConverseRequest | None
    message_id: str | None = None
    audio: bytes | None = None


def _type_ok(value: Any, expected: str) -> bool:
    if expected == STRING:
        return isinstance(value, str)
    if expected == NUMBER:
        # bool is an int in Python, not a number in JSON.
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected == INTEGER:
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        return whole and not isinstance(value, bool)
    if expected == BOOLEAN:
        return isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def parse_frame(text: str) -> ClientFrame:
    """A text frame as a `ClientFrame`, or `FrameError` naming what is wrong."""
    try:
        document = decode_json_object(text, what="the frame")
    except InvalidJson as exc:
        raise FrameError("INVALID_JSON", exc.message, None, None) from None
    request_id = document.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not is_request_id(request_id)):
        raise FrameError(
            "INVALID_ARGUMENT",
            f"request_id: a string of 1 to {MAX_REQUEST_ID_CHARS} visible ASCII characters",
            None,
            None,
        )
    action = document.get("action")
    if not isinstance(action, str) or action not in ACTION_FIELDS:
        known = ", ".join(ACTION_FIELDS)
        raise FrameError(
            "INVALID_ARGUMENT",
            f"action: must be one of {known}",
            action if isinstance(action, str) else None,
            request_id,
        )
    fields = ACTION_FIELDS[action]

    def refuse(message: str) -> FrameError:
        return FrameError("INVALID_ARGUMENT", message, action, request_id)

    for name, value in document.items():
        if name in COMMON_FIELDS:
            continue
        expected = fields.get(name)
        if expected is None:
            allowed = ", ".join(fields) or "none"
            raise refuse(f"{name}: unknown field for action {action} (expected: {allowed})")
        if not _type_ok(value, expected):
            raise refuse(f"{name}: must be a JSON {expected}")
    for name in REQUIRED_FIELDS.get(action, ()):
        if name not in document:
            raise refuse(f"{name}: required for action {action}")
    if action == "ping":
        return ClientFrame(action, request_id, "", None)
    conversation_id: str = document["conversation_id"]
    message_id: str | None = None
    request = pb.ConverseRequest(conversation_id=conversation_id)
    if action in ("unsubscribe", "audio", "utterance_cancel", "utterance_end"):
        if not _is_uuid(conversation_id):
            raise refuse("conversation_id: value must be a valid UUID")
        if action == "utterance_end":  # the utterance the connection gathered goes in `request`
            return ClientFrame(action, request_id, conversation_id, request)
        audio = _base64_audio(document["audio"], refuse) if action == "audio" else None
        return ClientFrame(action, request_id, conversation_id, None, audio=audio)
    if action == "subscribe":
        request.join.after_event_id = document.get("last_event_id", "")
    elif action == "message":
        message_id = document.get("message_id") or str(uuid.uuid4())
        request.user_message.message_id = message_id
        request.user_message.text = document["text"]
        request.user_message.mention_agent_ids.extend(document.get("mention_agent_ids", ()))
        request.user_message.speak_answers = document.get("speak", False)
    elif action == "utterance_start":
        message_id = document.get("message_id") or str(uuid.uuid4())
        _utterance(request.utterance, document, message_id, refuse)
    elif action == "bid":
        request.bid.agent_id = document["agent_id"]
        request.bid.score = float(document["score"])
        request.bid.turn_id = document.get("turn_id", "")
        request.bid.rationale = document.get("rationale", "")
    else:
        request.cancel.turn_id = document.get("turn_id", "")
        request.cancel.reason = document.get("reason", "")
    problem = violations(request, _FRAME_FIELD)
    if problem is not None:
        raise refuse(problem)
    if action == "utterance_start":
        request.utterance.ClearField("audio")  # the placeholder the check needed; the audio comes next
    return ClientFrame(action, request_id, conversation_id, request, message_id)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _utterance(utterance: pb.Utterance, document: dict[str, Any], message_id: str, refuse: Refuse) -> None:
    """Fills `utterance` from an `utterance_start` frame; the format and the rate are checked here,
    the rest by the proto's rules."""
    name = document["format"]
    audio_format = AUDIO_FORMATS.get(name)
    if audio_format is None:
        raise refuse(f"format: must be one of {', '.join(AUDIO_FORMATS)}, not {name!r}")
    rate = document.get("sample_rate")
    if audio_format == audio_pb2.AUDIO_FORMAT_PCM:
        if rate is None:
            raise refuse("sample_rate: required for format pcm")
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise refuse(f"sample_rate: must be {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz, not {rate:g}")
        utterance.sample_rate = int(rate)
    elif rate is not None:
        raise refuse("sample_rate: only for format pcm (a WAV says its own)")
    utterance.message_id = message_id
    utterance.format = audio_format
    utterance.language = document.get("language", "")
    utterance.mention_agent_ids.extend(document.get("mention_agent_ids", ()))
    # A question asked aloud is answered aloud unless the client says otherwise.
    utterance.speak_answers = document.get("speak", True)
    # The audio's own rules (1 byte to 4,000,000) are the utterance's end's to check: a placeholder
    # lets the proto's rules check everything else now.
    utterance.audio = b"\0\0"


def _base64_audio(text: str, refuse: Refuse) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise refuse("audio: must be base64 (RFC 4648, with padding)") from None


# Server frames. Each is one JSON text; `dumps` keeps them compact.


def event_frame(event: pb.ConversationEvent) -> str:
    return dumps(
        {
            "type": "event",
            "conversation_id": event.conversation_id,
            "event_id": event.event_id,
            "kind": payload_kind(event),
            "event": event_document(event),
        }
    )


def error_frame(
    code: str,
    message: str,
    *,
    action: str | None = None,
    request_id: str | None = None,
    conversation_id: str | None = None,
    **extra: Any,
) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message, "action": action}
    frame["request_id"] = request_id
    if conversation_id is not None:
        frame["conversation_id"] = conversation_id
    frame.update(extra)
    return dumps(frame)


def rpc_error_fields(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    """The frame `code` and `message` of a failed RPC: the gRPC status name and its details, as
    the edge's HTTP error body has them (services/edge/errors.py)."""
    code = error.code()
    return code.name, error.details() or code.name.lower()


def reply_frame(kind: str, frame: ClientFrame, **extra: Any) -> str:
    document: dict[str, Any] = {"type": kind, "action": frame.action, "request_id": frame.request_id}
    if frame.conversation_id:
        document["conversation_id"] = frame.conversation_id
    document.update(extra)
    return dumps(document)
