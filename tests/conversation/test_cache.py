"""The Redis read-through cache of GetAgent and GetConversation: it serves hits, and no process reads
a value older than the last committed update, including when a slow miss races an invalidation."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis
from google.protobuf.field_mask_pb2 import FieldMask
from macp.conversation.v1 import conversation_service_pb2 as pb

from services.conversation.cache import ResourceCache
from services.conversation.service import DEFINITION as CONVERSATION
from tests.conversation.conftest import World, new_agent, new_conversation
from tests.runtime.serving import running

pytestmark = pytest.mark.integration


async def _a_hit_is_served_from_redis(world: World) -> None:
    alice = world.alice
    agent = await new_agent(alice)
    await alice.stub.GetAgent(pb.GetAgentRequest(id=agent.id))
    # Behind the service's back: a cached read still shows the old name, which proves it was a hit.
    connection = await asyncpg.connect(world.environ["MACP_DATABASE_URL"])
    try:
        await connection.execute(
            "UPDATE conversation_agents SET name = 'behind' WHERE id = $1", uuid.UUID(agent.id)
        )
    finally:
        await connection.close()
    assert (await alice.stub.GetAgent(pb.GetAgentRequest(id=agent.id))).agent.name == agent.name


async def test_no_stale_read_across_two_service_processes(world: World) -> None:
    environ = {**world.environ, "MACP_CONVERSATION_PORT": "0"}
    async with running(CONVERSATION, environ) as second:
        here, there = world.alice, await world.caller_on(second.port, world.alice)
        agent = await new_agent(here)
        conversation = await new_conversation(here, agent)
        for round_ in range(10):
            writer, reader = (here, there) if round_ % 2 else (there, here)
            # Both processes have it cached...
            await writer.stub.GetAgent(pb.GetAgentRequest(id=agent.id))
            await reader.stub.GetAgent(pb.GetAgentRequest(id=agent.id))
            await reader.stub.GetConversation(pb.GetConversationRequest(id=conversation.id))
            # ... one updates; the other's next read shows the update.
            changes = pb.Agent(id=agent.id, etag=agent.etag, name=f"round {round_}")
            agent = (
                await writer.stub.UpdateAgent(
                    pb.UpdateAgentRequest(agent=changes, update_mask=FieldMask(paths=["name"]))
                )
            ).agent
            assert (await reader.stub.GetAgent(pb.GetAgentRequest(id=agent.id))).agent == agent
            title = pb.Conversation(id=conversation.id, etag=conversation.etag, title=f"round {round_}")
            conversation = (
                await writer.stub.UpdateConversation(
                    pb.UpdateConversationRequest(conversation=title, update_mask=FieldMask(paths=["title"]))
                )
            ).conversation
            seen = (
                await reader.stub.GetConversation(pb.GetConversationRequest(id=conversation.id))
            ).conversation
            assert seen == conversation
    # Further cases on the same running service (one set-up for all of them).
    await _a_hit_is_served_from_redis(world)


async def test_a_slow_miss_cannot_refill_a_value_an_update_invalidated(world: World) -> None:
    redis: aioredis.Redis = aioredis.from_url(world.environ["MACP_REDIS_URL"])
    try:
        cache = ResourceCache(redis, world.environ["MACP_REDIS_KEY_PREFIX"], "race")
        old, new = pb.Agent(id="a", name="old"), pb.Agent(id="a", name="new")
        database = {"row": old}
        read_started, release = asyncio.Event(), asyncio.Event()

        async def slow_load() -> pb.Agent:
            row = database["row"]  # the reader's snapshot: taken before the update commits
            read_started.set()
            await release.wait()
            return row

        async def load() -> pb.Agent:
            return database["row"]

        reader = asyncio.create_task(cache.get("t", "a", pb.Agent.FromString, slow_load))
        await read_started.wait()
        database["row"] = new  # the update commits...
        await cache.invalidate("t", "a")  # ... and invalidates, while the reader still holds the old row
        release.set()
        assert await reader == old  # that reader answered before the update finished: fine
        # Its fill was refused: the next read misses and sees the update.
        assert await cache.get("t", "a", pb.Agent.FromString, load) == new
        # And a fill with no invalidation in between is kept (a hit, not a load).
        database["row"] = pb.Agent(id="a", name="not read")
        assert await cache.get("t", "a", pb.Agent.FromString, load) == new
    finally:
        await redis.aclose()
