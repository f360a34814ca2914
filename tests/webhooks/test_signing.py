"""The deliverer's signature is the Standard Webhooks one (the specification's own example), its
retries back off exponentially up to the cap, and a delivery's id and body are what receivers
are told they are."""

from __future__ import annotations

import json

from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.webhooks.payload import body, webhook_id
from services.orchestrator.webhooks.settings import DeliverySettings
from services.orchestrator.webhooks.signing import secret_key, signed_headers
from services.runtime.settings import Env
from tests.webhooks.receiver import expected_signature

# The example of the Standard Webhooks specification and its reference libraries.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MESSAGE_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
PAYLOAD = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_signature_is_the_specifications() -> None:
    headers = signed_headers(secret_key(SECRET), MESSAGE_ID, TIMESTAMP, PAYLOAD)
    assert headers["webhook-signature"] == SIGNATURE
    assert headers["webhook-id"] == MESSAGE_ID
    assert headers["webhook-timestamp"] == str(TIMESTAMP)
    assert "v1," + expected_signature(SECRET, MESSAGE_ID, str(TIMESTAMP), PAYLOAD) == SIGNATURE


def test_retries_back_off_exponentially_up_to_the_cap() -> None:
    settings = DeliverySettings.from_env(
        Env(
            {
                "MACP_ORCHESTRATOR_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
                "MACP_ORCHESTRATOR_WEBHOOK_RETRY_MAX_SECONDS": "3",
            }
        )
    )
    assert [settings.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert settings.sealing_key is None


def test_a_deliverys_id_is_stable_and_its_body_carries_the_event_as_the_edge_sends_it() -> None:
    event = pb.ConversationEvent(
        event_id="1700000000000-3",
        conversation_id="c0ffee00-0000-4000-8000-000000000001",
        turn_completed=pb.TurnCompleted(turn_id="t1", agent_id="a1"),
    )
    event.time.FromMilliseconds(1700000000000)
    first = webhook_id("s1", event.conversation_id, event.event_id)
    assert first == webhook_id("s1", event.conversation_id, event.event_id)
    assert first != webhook_id("s2", event.conversation_id, event.event_id)
    assert first.startswith("msg_")
    document = json.loads(body(event))
    assert document["type"] == "turn_completed"
    assert document["conversationId"] == event.conversation_id
    assert document["eventId"] == "1700000000000-3"
    assert document["time"] == "2023-11-14T22:13:20Z"
    assert document["data"]["turn_completed"]["turn_id"] == "t1"
    assert document["data"]["event_id"] == "1700000000000-3"
