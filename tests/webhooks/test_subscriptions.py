"""Webhook subscriptions over REST, end to end (client -> Envoy -> edge -> mesh -> conversation
service -> Postgres): what is refused and how it is named, tenancy, and the secret shown once."""

from __future__ import annotations

import base64
import uuid

import grpc
import httpx
import pytest
from macp.conversation.v1 import webhook_service_pb2 as pb
from macp.conversation.v1 import webhook_service_pb2_grpc as pb_grpc

from tests.tokens import bearer
from tests.world import World

pytestmark = pytest.mark.integration


def client(world: World) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=world.front_url, timeout=10, headers={"authorization": f"Bearer {world.edge_token}"}
    )


async def test_a_subscription_is_created_read_listed_and_deleted_and_its_secret_shown_once(
    webhook_world: World,
) -> None:
    world = await webhook_world.other_tenant()
    conversation = await world.conversation([await world.agent("Ada")])
    async with client(world) as http:
        created = await http.post(
            "/v1/webhooks", json={"url": "https://hooks.example.com/macp", "conversationId": conversation.id}
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert created.headers["location"] == f"/v1/webhooks/{body['id']}"
        secret = body["secret"]
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
        # Every kind but token_delta, unless asked for.
        assert "token_delta" not in body["eventKinds"]
        assert {"turn_completed", "round_completed", "message_accepted"} <= set(body["eventKinds"])

        read = await http.get(f"/v1/webhooks/{body['id']}")
        assert read.status_code == 200
        assert "secret" not in read.json() or read.json()["secret"] == ""
        assert read.json()["conversationId"] == conversation.id
        listed = (await http.get("/v1/webhooks")).json()["webhookSubscriptions"]
        assert [item["id"] for item in listed] == [body["id"]]
        assert all(not item.get("secret") for item in listed)

        deliveries = await http.get(f"/v1/webhooks/{body['id']}/deliveries")
        assert deliveries.status_code == 200
        assert deliveries.json().get("deliveries", []) == []

        assert (await http.delete(f"/v1/webhooks/{body['id']}")).status_code == 204
        assert (await http.get(f"/v1/webhooks/{body['id']}")).status_code == 404
        # A second delete finds nothing, and audits nothing.
        assert (await http.delete(f"/v1/webhooks/{body['id']}")).status_code == 404
    # Both writes are audited: who subscribed which URL, and who removed it.
    async with world.database() as db:
        rows = await db.fetch(
            "SELECT action, detail FROM audit_events"
            " WHERE tenant_id = $1 AND resource = $2 ORDER BY event_time",
            world.tenant.tenant_id,
            f"webhook/{body['id']}",
        )
    assert [row["action"] for row in rows] == ["webhook.create", "webhook.delete"]
    assert "hooks.example.com" in rows[0]["detail"]


async def test_token_delta_is_delivered_only_when_asked_for(webhook_world: World) -> None:
    world = await webhook_world.other_tenant()
    async with client(world) as http:
        created = await http.post(
            "/v1/webhooks",
            json={"url": "https://hooks.example.com/deltas", "eventKinds": ["token_delta", "turn_completed"]},
        )
    assert created.status_code == 201, created.text
    assert created.json()["eventKinds"] == ["token_delta", "turn_completed"]
    assert created.json().get("conversationId", "") == ""


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"url": "http://hooks.example.com/macp"}, "webhookSubscription.url"),
        ({"url": "ftp://hooks.example.com/macp"}, "webhookSubscription.url"),
        ({"url": "not a url"}, "url"),
        ({}, "url"),
        ({"url": "https://hooks.example.com/", "eventKinds": ["token_deltas"]}, "event_kinds"),
        ({"url": "https://hooks.example.com/", "conversationId": "nope"}, "conversationId"),
        # An internal address (the cloud's metadata endpoint, a private network) is never a receiver.
        ({"url": "https://169.254.169.254/latest/meta-data"}, "webhookSubscription.url"),
        ({"url": "https://10.0.0.7/hook"}, "webhookSubscription.url"),
        ({"url": "https://[fd00::7]/hook"}, "webhookSubscription.url"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    webhook_world: World, document: dict[str, object], named: str
) -> None:
    world = await webhook_world.other_tenant()
    async with client(world) as http:
        answer = await http.post("/v1/webhooks", json=document)
    assert answer.status_code == 400, answer.text
    message = answer.json()["message"]
    assert named.lower().replace("_", "") in message.lower().replace("_", ""), message


async def test_http_is_accepted_for_a_loopback_host_where_allowed(webhook_world: World) -> None:
    world = await webhook_world.other_tenant()
    async with client(world) as http:
        answer = await http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"})
    assert answer.status_code == 201, answer.text


async def test_another_tenants_conversation_is_a_404_naming_the_field(webhook_world: World) -> None:
    owner = await webhook_world.other_tenant()
    conversation = await owner.conversation([await owner.agent("Ada")])
    stranger = await webhook_world.other_tenant()
    async with client(stranger) as http:
        answer = await http.post(
            "/v1/webhooks", json={"url": "https://hooks.example.com/", "conversationId": conversation.id}
        )
        missing = await http.post(
            "/v1/webhooks", json={"url": "https://hooks.example.com/", "conversationId": str(uuid.uuid4())}
        )
    for refused in (answer, missing):
        assert refused.status_code == 404, refused.text
        assert "conversation_id" in refused.json()["message"]


async def test_another_tenant_never_sees_a_subscription(webhook_world: World) -> None:
    owner = await webhook_world.other_tenant()
    stranger = await webhook_world.other_tenant()
    async with client(owner) as http:
        created = (await http.post("/v1/webhooks", json={"url": "https://hooks.example.com/"})).json()
    async with client(stranger) as http:
        assert (await http.get(f"/v1/webhooks/{created['id']}")).status_code == 404
        assert (await http.get(f"/v1/webhooks/{created['id']}/deliveries")).status_code == 404
        assert (await http.delete(f"/v1/webhooks/{created['id']}")).status_code == 404
        assert (await http.get("/v1/webhooks")).json().get("webhookSubscriptions", []) == []
    async with client(owner) as http:
        assert (await http.get(f"/v1/webhooks/{created['id']}")).status_code == 200


async def test_a_users_token_cannot_read_the_delivery_targets(webhook_world: World) -> None:
    """The deliverers' RPC hands out every tenant's sealed secrets: a user's token is refused, even
    one exchanged by a service with the scope it asks for."""
    world = await webhook_world.other_tenant()
    stub = pb_grpc.WebhookServiceStub(world.channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListDeliveryTargets(
            pb.ListDeliveryTargetsRequest(), metadata=bearer(world.conversation_token), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
