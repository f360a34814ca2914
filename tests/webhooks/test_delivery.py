"""Webhook deliveries over the whole mesh: a receiver on 127.0.0.1 gets a round's events from the
orchestrator's deliverer, signed, in log order, once each by `webhook-id`; one that never answers
2xx ends in the dead letter, visible over REST; a tenant-wide subscription follows a conversation
created after it; an orchestrator stopped mid-delivery loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from services.runtime.redis_client import text_of
from tests.orchestrator.test_takeover import orchestrator_process
from tests.webhooks.receiver import TOLERANCE_SECONDS, Receiver, receiving
from tests.world import World

pytestmark = pytest.mark.integration

ATTEMPTS = 5  # tests/webhooks/conftest.py: MACP_ORCHESTRATOR_WEBHOOK_ATTEMPTS


def client(world: World) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=world.front_url, timeout=10, headers={"authorization": f"Bearer {world.edge_token}"}
    )


async def subscribe(world: World, receiver: Receiver, **fields: Any) -> dict[str, Any]:
    async with client(world) as http:
        answer = await http.post("/v1/webhooks", json={"url": receiver.url, **fields})
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    receiver.secret = created["secret"]
    return created


async def round_event_ids(world: World, conversation_id: str, text: str) -> list[str]:
    """Post `text` and return the ids of its round's events that a default subscription wants
    (every kind but token_delta), in log order."""
    accepted = await world.post(conversation_id, text)
    events = await world.round_events(conversation_id, "0-0", accepted.message_id)
    return [event.event_id for event in events if event.WhichOneof("payload") != "token_delta"]


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.1)


def assert_delivered_once_in_order(receiver: Receiver, expected: list[str]) -> None:
    assert receiver.accepted_event_ids() == expected
    for received in receiver.accepted.values():
        assert received.valid_signature
        assert abs(received.arrived - received.timestamp) <= TOLERANCE_SECONDS
        assert received.document["data"]["event_id"] == received.document["eventId"]
        assert received.document["type"] in received.document["data"]
    # The same webhook-id on every attempt at one event, and one id per event.
    ids_of_event: dict[str, set[str]] = {}
    for received in receiver.requests:
        ids_of_event.setdefault(received.document["eventId"], set()).add(received.webhook_id)
    assert all(len(ids) == 1 for ids in ids_of_event.values())


async def test_a_receiver_failing_three_times_then_succeeding_gets_every_event_once_in_order(
    webhook_world: World,
) -> None:
    world = await webhook_world.other_tenant()
    conversation = await world.conversation([await world.agent("Ada"), await world.agent("Grace")])
    async with receiving(Receiver(fail_first=3)) as receiver:
        await subscribe(world, receiver, conversationId=conversation.id)
        expected = await round_event_ids(world, conversation.id, "Hello, both")

        async def all_in() -> bool:
            return len(receiver.accepted) >= len(expected)

        await eventually(all_in)
        await asyncio.sleep(0.5)  # nothing more (no duplicate acceptance, nothing out of order) follows
    assert_delivered_once_in_order(receiver, expected)
    first = next(iter(receiver.accepted))
    assert receiver.attempts(first) == 4  # three 503s, then accepted


async def test_a_receiver_down_for_good_ends_in_the_dead_letter_visible_over_rest(
    webhook_world: World,
) -> None:
    world = await webhook_world.other_tenant()
    conversation = await world.conversation([await world.agent("Ada")])
    async with receiving(Receiver(fail_always=True)) as receiver:
        subscription = await subscribe(world, receiver, conversationId=conversation.id)
        expected = await round_event_ids(world, conversation.id, "Anyone there?")
        path = f"/v1/webhooks/{subscription['id']}/deliveries"
        async with client(world) as http:

            async def all_dead() -> bool:
                answer = await http.get(path, params={"status": "WEBHOOK_DELIVERY_STATUS_DEAD_LETTERED"})
                return len(answer.json().get("deliveries", [])) == len(expected)

            await eventually(all_dead, seconds=60)
            dead = (await http.get(path, params={"status": "WEBHOOK_DELIVERY_STATUS_DEAD_LETTERED"})).json()
            state = (await http.get(f"/v1/webhooks/{subscription['id']}")).json()["deliveryState"]
    letters = dead["deliveries"]
    assert sorted(letter["eventId"] for letter in letters) == sorted(expected)
    for letter in letters:
        assert letter["attempts"] == ATTEMPTS
        assert letter["lastHttpStatus"] == 503
        assert "503" in letter["lastFailureReason"]
        assert receiver.attempts(letter["id"]) == ATTEMPTS
    assert state["consecutiveFailures"] == ATTEMPTS * len(expected)
    assert "503" in state["lastFailureReason"]
    assert "lastSuccessTime" not in state


async def test_a_tenant_wide_subscription_gets_a_conversation_created_after_it(webhook_world: World) -> None:
    world = await webhook_world.other_tenant()
    async with receiving(Receiver()) as receiver:
        await subscribe(world, receiver, eventKinds=["message_accepted", "turn_completed", "round_completed"])
        conversation = await world.conversation([await world.agent("Ada")])
        accepted = await world.post(conversation.id, "Hello, Ada")
        events = await world.round_events(conversation.id, "0-0", accepted.message_id)
        wanted = {"message_accepted", "turn_completed", "round_completed"}
        expected = [event.event_id for event in events if event.WhichOneof("payload") in wanted]

        async def all_in() -> bool:
            return len(receiver.accepted) >= len(expected)

        await eventually(all_in)
    assert_delivered_once_in_order(receiver, expected)
    assert {received.document["conversationId"] for received in receiver.accepted.values()} == {
        conversation.id
    }


async def test_an_orchestrator_stopped_mid_delivery_loses_nothing(world: World) -> None:
    """Two orchestrators; the one delivering is stopped (killed, if it is the other process) while
    the receiver holds a delivery open. The other takes the stream over and delivers the held event
    again, under the same webhook-id, and everything after it, in order."""
    conversation = await world.conversation([await world.agent("Ada"), await world.agent("Grace")])
    redis: aioredis.Redis = aioredis.from_url(world.environ["MACP_REDIS_URL"])
    prefix = world.environ.get("MACP_REDIS_KEY_PREFIX", "")
    try:
        async with (
            orchestrator_process(world) as (process, _port),
            receiving(Receiver(hold_delivery=3)) as receiver,
        ):
            subscription = await subscribe(world, receiver, conversationId=conversation.id)
            expected = await round_event_ids(world, conversation.id, "Hello, both")
            await asyncio.wait_for(receiver.holding.wait(), 30)
            held_by = await redis.get(f"{prefix}webhooks:lease:{subscription['id']}:{conversation.id}")
            assert held_by is not None, "nobody holds the stream while it delivers"
            holder = text_of(held_by)
            pid = int(holder.split(" ")[0].split(":")[1])
            if pid == process.pid:
                process.send_signal(signal.SIGKILL)
            else:
                assert pid == os.getpid()
                world.orchestrators[0].stop.set()
                await world.orchestrators[0].stopped.wait()
            receiver.release.set()

            async def all_in() -> bool:
                return len(receiver.accepted) >= len(expected)

            await eventually(all_in, seconds=60)
            held = [r for r in receiver.requests if r.document["eventId"] == expected[2]]
    finally:
        await redis.aclose()
    assert_delivered_once_in_order(receiver, expected)
    assert len(held) >= 2, "the held delivery was not delivered again"
    assert len({r.webhook_id for r in held}) == 1
