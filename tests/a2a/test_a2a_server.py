"""Every agent is an A2A agent at the edge, driven by the official `a2a-sdk` client through Envoy's
front listener: its card, a streamed message whose round runs on the real mesh, a second client
subscribing mid-stream, cancel, tenancy, and usage that matches metering's."""

from __future__ import annotations

import uuid

import pytest
from a2a.types import a2a_pb2 as a2a

from services.runtime.a2a_usage import USAGE_EXTENSION_URI
from tests.a2a.a2a_clients import a2a_client, user_message
from tests.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    return await module_world.other_tenant()


async def test_a_streamed_message_is_answered_through_the_official_client(world: World) -> None:
    ada = await world.agent("Ada", capabilities=["finance.tax"])
    async with a2a_client(world.front_url, ada.id, world.edge_token) as (card, client):
        assert card.name == "Ada"
        assert [skill.id for skill in card.skills] == ["finance.tax"]
        assert card.capabilities.streaming
        assert [extension.uri for extension in card.capabilities.extensions] == [USAGE_EXTENSION_URI]
        events = [
            event async for event in client.send_message(user_message("hello agent", str(uuid.uuid4())))
        ]
    assert events[0].HasField("task")
    task = events[0].task
    assert task.status.state == a2a.TASK_STATE_SUBMITTED
    deltas = [e.artifact_update for e in events if e.HasField("artifact_update")]
    text = "".join(part.text for update in deltas for part in update.artifact.parts)
    final = events[-1].status_update
    assert final.status.state == a2a.TASK_STATE_COMPLETED
    messages = await world.messages(task.context_id)
    assert [m.text for m in messages][-1] == text
    assert text
    usage = final.metadata[USAGE_EXTENSION_URI]
    assert usage["agentTurns"] == 1
    assert usage["outputTokens"] > 0
