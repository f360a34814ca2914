"""What one delivery carries: its id and its JSON body.

The body is `{"type", "conversationId", "eventId", "time", "data"}`, `data` being the event exactly
as the edge sends it on SSE and the WebSocket (services/edge/events.py `event_document`), so a
subscriber parses one shape wherever it reads events. The id is derived from the subscription,
the conversation and the event, so every attempt at the delivery, by whichever process, carries
the same `webhook-id`.
"""

from __future__ import annotations

import json
import uuid

from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.runtime.event_documents import event_document, payload_kind

# Names the delivery ids' UUIDv5 space: any fixed UUID would do, this one is MACP's.
_DELIVERY_NAMESPACE = uuid.UUID("5b0e7a8e-3c4f-4f3e-9a53-8a1f2f0c6d11")


def webhook_id(subscription_id: str, conversation_id: str, event_id: str) -> str:
    name = f"{subscription_id}/{conversation_id}/{event_id}"
    return f"msg_{uuid.uuid5(_DELIVERY_NAMESPACE, name).hex}"


def body(event: pb.ConversationEvent) -> bytes:
    document = {
        "type": payload_kind(event),
        "conversationId": event.conversation_id,
        "eventId": event.event_id,
        "time": event.time.ToJsonString(),
        "data": event_document(event),
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
