"""Agents over a real gRPC channel against the real Postgres and Redis: create, read, page, update
with a field mask and an etag, soft delete, and the rule that an agent in use cannot go."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from macp.common.v1 import agent_settings_pb2
from macp.conversation.v1 import conversation_service_pb2 as pb

from tests.conversation.conftest import World, new_agent, new_conversation, refused

pytestmark = pytest.mark.integration


async def test_create_get_and_the_row_carries_the_callers_tenant_and_owner(world: World) -> None:
    alice = world.alice
    created = await new_agent(
        alice,
        system_prompt="You check proofs.",
        capabilities=["math"],
        generation=agent_settings_pb2.GenerationSettings(max_tokens=256, temperature=0.2),
        tenant_id="someone-else",
        owner_id="mallory",
    )
    assert (created.tenant_id, created.owner_id) == (alice.tenant_id, alice.user_id)
    fetched = (await alice.stub.GetAgent(pb.GetAgentRequest(id=created.id))).agent
    assert fetched == created
    connection = await asyncpg.connect(world.environ["MACP_DATABASE_URL"])
    try:
        row = await connection.fetchrow(
            "SELECT * FROM conversation_agents WHERE id = $1", uuid.UUID(created.id)
        )
    finally:
        await connection.close()
    assert row is not None
    assert (row["tenant_id"], row["owner_id"], row["etag"]) == (alice.tenant_id, alice.user_id, created.etag)


async def test_list_pages_in_creation_order_and_filters_by_capability(world: World) -> None:
    alice = world.alice
    made = [await new_agent(alice, f"A{i}", capabilities=["code"] if i % 2 else []) for i in range(7)]
    seen: list[str] = []
    token = ""
    while True:
        page = await alice.stub.ListAgents(pb.ListAgentsRequest(page_size=3, page_token=token))
        assert len(page.agents) <= 3
        seen += [agent.id for agent in page.agents]
        token = page.next_page_token
        if not token:
            break
    assert seen == [agent.id for agent in made]
    coders = await alice.stub.ListAgents(pb.ListAgentsRequest(capability="code"))
    assert [agent.id for agent in coders.agents] == [agent.id for agent in made if agent.capabilities]
    # A token cannot be replayed with other filters, and garbage is refused naming the field.
    first = await alice.stub.ListAgents(pb.ListAgentsRequest(page_size=1))
    replayed = await refused(
        alice.stub.ListAgents(pb.ListAgentsRequest(page_token=first.next_page_token, capability="code"))
    )
    assert replayed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (replayed.details() or "")
    garbage = await refused(alice.stub.ListAgents(pb.ListAgentsRequest(page_token="!!not-a-token")))
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Further cases on the same running service (one set-up for all of them).
    await _paging_is_stable_under_concurrent_inserts(world)


async def _paging_is_stable_under_concurrent_inserts(world: World) -> None:
    alice = world.alice
    before = [await new_agent(alice, f"B{i}") for i in range(12)]
    seen: list[str] = []
    token = ""
    inserted: list[pb.Agent] = []
    while True:
        page = await alice.stub.ListAgents(pb.ListAgentsRequest(page_size=4, page_token=token))
        seen += [agent.id for agent in page.agents]
        # Inserts land between pages: none of the agents that existed before is skipped or repeated.
        inserted += await asyncio.gather(*(new_agent(alice, "late") for _ in range(3)))
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen))
    existing = {agent.id for agent in before}
    assert [agent_id for agent_id in seen if agent_id in existing] == [agent.id for agent in before]


async def test_update_changes_only_the_masked_fields_and_needs_the_current_etag(world: World) -> None:
    alice = world.alice
    agent = await new_agent(
        alice,
        system_prompt="old",
        generation=agent_settings_pb2.GenerationSettings(max_tokens=100, temperature=0.5),
    )
    changes = pb.Agent(id=agent.id, etag=agent.etag, name="Grace", system_prompt="ignored")
    changes.generation.temperature = 1.5
    updated = (
        await alice.stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=changes, update_mask=FieldMask(paths=["name", "generation.temperature"])
            )
        )
    ).agent
    assert updated.name == "Grace"
    assert updated.system_prompt == "old"
    assert (updated.generation.max_tokens, updated.generation.temperature) == (100, 1.5)
    assert updated.etag != agent.etag
    assert updated.update_time.ToDatetime() > agent.update_time.ToDatetime()
    # The old etag is stale now.
    stale = await refused(
        alice.stub.UpdateAgent(pb.UpdateAgentRequest(agent=changes, update_mask=FieldMask(paths=["name"])))
    )
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "etag" in (stale.details() or "")
    # GetAgent (read through the cache) sees the update at once.
    assert (await alice.stub.GetAgent(pb.GetAgentRequest(id=agent.id))).agent == updated
    for paths, fragment in (
        (["id"], "update_mask"),
        (["generation.nope"], "update_mask"),
        ([], "update_mask"),
    ):
        request = pb.UpdateAgentRequest(
            agent=pb.Agent(id=agent.id, etag=updated.etag), update_mask=FieldMask(paths=paths)
        )
        bad = await refused(alice.stub.UpdateAgent(request))
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in (bad.details() or "")
    cleared = pb.UpdateAgentRequest(
        agent=pb.Agent(id=agent.id, etag=updated.etag), update_mask=FieldMask(paths=["name"])
    )
    assert (await refused(alice.stub.UpdateAgent(cleared))).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await alice.stub.GetAgent(pb.GetAgentRequest(id=agent.id))).agent == updated


async def test_two_concurrent_updates_with_the_same_etag_exactly_one_wins(world: World) -> None:
    alice = world.alice
    for _ in range(5):
        agent = await new_agent(alice)

        def rename(name: str, agent: pb.Agent = agent) -> pb.UpdateAgentRequest:
            changes = pb.Agent(id=agent.id, etag=agent.etag, name=name)
            return pb.UpdateAgentRequest(agent=changes, update_mask=FieldMask(paths=["name"]))

        results = await asyncio.gather(
            *(alice.stub.UpdateAgent(rename(f"N{i}")) for i in range(4)), return_exceptions=True
        )
        winners = [r for r in results if isinstance(r, pb.UpdateAgentResponse)]
        losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(winners) == 1
        assert [loser.code() for loser in losers] == [grpc.StatusCode.FAILED_PRECONDITION] * 3
        stored = (await alice.stub.GetAgent(pb.GetAgentRequest(id=agent.id))).agent
        assert stored == winners[0].agent


async def test_delete_is_soft_hidden_from_every_read_and_refused_while_in_use(world: World) -> None:
    alice = world.alice
    busy, idle = await new_agent(alice, "busy"), await new_agent(alice, "idle")
    conversation = await new_conversation(alice, busy)
    in_use = await refused(alice.stub.DeleteAgent(pb.DeleteAgentRequest(id=busy.id)))
    assert in_use.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert conversation.id in (in_use.details() or "")
    stale = await refused(alice.stub.DeleteAgent(pb.DeleteAgentRequest(id=idle.id, etag="stale")))
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION

    await alice.stub.GetAgent(pb.GetAgentRequest(id=idle.id))  # fills the cache
    await alice.stub.DeleteAgent(pb.DeleteAgentRequest(id=idle.id, etag=idle.etag))
    for call in (
        alice.stub.GetAgent(pb.GetAgentRequest(id=idle.id)),
        alice.stub.DeleteAgent(pb.DeleteAgentRequest(id=idle.id)),
        alice.stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=pb.Agent(id=idle.id, etag=idle.etag, name="x"), update_mask=FieldMask(paths=["name"])
            )
        ),
    ):
        assert (await refused(call)).code() == grpc.StatusCode.NOT_FOUND
    listed = await alice.stub.ListAgents(pb.ListAgentsRequest())
    assert idle.id not in {agent.id for agent in listed.agents}
    # A deleted agent cannot join a conversation.
    joined = await refused(new_conversation(alice, idle))
    assert joined.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert idle.id in (joined.details() or "")

    # Once its conversation is archived and closed, the agent may go.
    await alice.stub.ArchiveConversation(
        pb.ArchiveConversationRequest(conversation_id=conversation.id, close=True)
    )
    await alice.stub.DeleteAgent(pb.DeleteAgentRequest(id=busy.id))


async def test_an_agents_allowed_tools_are_stored_changed_and_checked(world: World) -> None:
    alice = world.alice
    agent = await new_agent(alice, allowed_tools=["weather__forecast", "calc__*"])
    assert list((await alice.stub.GetAgent(pb.GetAgentRequest(id=agent.id))).agent.allowed_tools) == [
        "weather__forecast",
        "calc__*",
    ]
    changes = pb.Agent(id=agent.id, etag=agent.etag, allowed_tools=["calc__add"])
    updated = (
        await alice.stub.UpdateAgent(
            pb.UpdateAgentRequest(agent=changes, update_mask=FieldMask(paths=["allowed_tools"]))
        )
    ).agent
    assert list(updated.allowed_tools) == ["calc__add"]
    bad = await refused(
        alice.stub.CreateAgent(
            pb.CreateAgentRequest(
                agent=pb.Agent(name="Eve", provider="local", model="echo-1", allowed_tools=["no-namespace"])
            )
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "allowed_tools" in (bad.details() or "")
