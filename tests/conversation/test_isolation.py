"""Tenants kept apart: every RPC given another tenant's id answers NOT_FOUND (never PERMISSION_DENIED,
which would reveal that it exists), in both directions, and no list shows another tenant's rows."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from macp.conversation.v1 import conversation_service_pb2 as pb

from tests.conversation.conftest import Caller, World, new_agent, new_conversation, refused

pytestmark = pytest.mark.integration


async def _owned(owner: Caller) -> tuple[pb.Agent, pb.Conversation, pb.Archive, pb.Message]:
    agent = await new_agent(owner)
    conversation = await new_conversation(owner, agent)
    message = pb.Message(
        id=str(uuid.uuid4()),
        conversation_id=conversation.id,
        role=pb.MESSAGE_ROLE_USER,
        author_id=owner.user_id,
        text="secret",
    )
    await owner.stub.AppendMessage(pb.AppendMessageRequest(message=message))
    archive = (
        await owner.stub.ArchiveConversation(pb.ArchiveConversationRequest(conversation_id=conversation.id))
    ).archive
    conversation = (
        await owner.stub.GetConversation(pb.GetConversationRequest(id=conversation.id))
    ).conversation
    return agent, conversation, archive, message


def _by_id_calls(
    intruder: Caller, agent: pb.Agent, conversation: pb.Conversation, archive: pb.Archive, message: pb.Message
) -> dict[str, Callable[[], Awaitable[Any]]]:
    stub = intruder.stub
    own_message = pb.Message()
    own_message.CopyFrom(message)
    own_message.author_id = intruder.user_id
    return {
        "GetAgent": lambda: stub.GetAgent(pb.GetAgentRequest(id=agent.id)),
        "UpdateAgent": lambda: stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=pb.Agent(id=agent.id, etag=agent.etag, name="pwned"),
                update_mask=FieldMask(paths=["name"]),
            )
        ),
        "DeleteAgent": lambda: stub.DeleteAgent(pb.DeleteAgentRequest(id=agent.id)),
        "GetConversation": lambda: stub.GetConversation(pb.GetConversationRequest(id=conversation.id)),
        "UpdateConversation": lambda: stub.UpdateConversation(
            pb.UpdateConversationRequest(
                conversation=pb.Conversation(id=conversation.id, etag=conversation.etag, title="pwned"),
                update_mask=FieldMask(paths=["title"]),
            )
        ),
        "DeleteConversation": lambda: stub.DeleteConversation(
            pb.DeleteConversationRequest(id=conversation.id)
        ),
        "AppendMessage": lambda: stub.AppendMessage(pb.AppendMessageRequest(message=own_message)),
        "ListMessages": lambda: stub.ListMessages(pb.ListMessagesRequest(conversation_id=conversation.id)),
        "ArchiveConversation": lambda: stub.ArchiveConversation(
            pb.ArchiveConversationRequest(conversation_id=conversation.id, close=True)
        ),
        "ListArchives": lambda: stub.ListArchives(pb.ListArchivesRequest(conversation_id=conversation.id)),
        "GetArchive": lambda: stub.GetArchive(pb.GetArchiveRequest(id=archive.id)),
    }


async def test_every_rpc_answers_not_found_for_another_tenants_ids_both_ways(world: World) -> None:
    for owner, intruder in ((world.alice, world.bob), (world.bob, world.alice)):
        agent, conversation, archive, message = await _owned(owner)
        calls = _by_id_calls(intruder, agent, conversation, archive, message)
        for name, call in calls.items():
            failure = await refused(call())
            assert failure.code() == grpc.StatusCode.NOT_FOUND, (
                f"{name}: {failure.code()} {failure.details()}"
            )
        # Another tenant's agents cannot be named as participants, worded as for a missing agent.
        joined = await refused(new_conversation(intruder, agent))
        assert joined.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not agents of this tenant" in (joined.details() or "")
        # The lists of the intruder show none of it.
        agents = await intruder.stub.ListAgents(pb.ListAgentsRequest(page_size=1000))
        conversations = await intruder.stub.ListConversations(pb.ListConversationsRequest(page_size=1000))
        assert agent.id not in {a.id for a in agents.agents}
        assert conversation.id not in {c.id for c in conversations.conversations}
        filtered = await intruder.stub.ListConversations(pb.ListConversationsRequest(agent_id=agent.id))
        assert list(filtered.conversations) == []
        # And the owner's resources are untouched.
        assert (await owner.stub.GetAgent(pb.GetAgentRequest(id=agent.id))).agent == agent
        still = (await owner.stub.GetConversation(pb.GetConversationRequest(id=conversation.id))).conversation
        assert still == conversation
        listed = await owner.stub.ListMessages(pb.ListMessagesRequest(conversation_id=conversation.id))
        assert [m.text for m in listed.messages] == ["secret"]
