"""Conversations: participants that must be the tenant's agents, turn policies, field-mask updates,
filters, and the read-only state an archive with `close` leaves behind."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from macp.conversation.v1 import conversation_service_pb2 as pb

from tests.conversation.conftest import World, new_agent, new_conversation, refused

pytestmark = pytest.mark.integration


async def _create_defaults_and_output_only_fields(world: World) -> None:
    alice = world.alice
    ada, bea = await new_agent(alice, "Ada"), await new_agent(alice, "Bea")
    conversation = await new_conversation(
        alice, ada, bea, status=pb.CONVERSATION_STATUS_ARCHIVED, archive_key="x", owner_id="mallory"
    )
    assert conversation.status == pb.CONVERSATION_STATUS_ACTIVE
    assert (conversation.tenant_id, conversation.owner_id) == (alice.tenant_id, alice.user_id)
    assert conversation.archive_key == ""
    assert list(conversation.participant_agent_ids) == [ada.id, bea.id]
    assert conversation.double_texting_policy == pb.DOUBLE_TEXTING_POLICY_REJECT
    assert (
        await alice.stub.GetConversation(pb.GetConversationRequest(id=conversation.id))
    ).conversation == conversation


async def test_participants_must_be_agents_of_the_tenant(world: World) -> None:
    alice, bob = world.alice, world.bob
    mine, theirs = await new_agent(alice), await new_agent(bob)
    for participants in ([theirs], [mine, theirs]):
        failure = await refused(new_conversation(alice, *participants))
        assert failure.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert theirs.id in (failure.details() or "")
    unknown = pb.Agent(id=str(uuid.uuid4()))
    assert (await refused(new_conversation(alice, unknown))).code() == grpc.StatusCode.FAILED_PRECONDITION
    none = await refused(new_conversation(alice))
    assert none.code() == grpc.StatusCode.INVALID_ARGUMENT
    coordinator = await refused(new_conversation(alice, mine, turn_policy=pb.TURN_POLICY_COORDINATOR))
    assert coordinator.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "coordinator" in (coordinator.details() or "")
    # Further cases on the same running service (one set-up for all of them).
    await _create_defaults_and_output_only_fields(world)


async def test_update_with_mask_checks_new_participants_and_the_coordinator(world: World) -> None:
    alice, bob = world.alice, world.bob
    ada, bea, theirs = await new_agent(alice, "Ada"), await new_agent(alice, "Bea"), await new_agent(bob)
    conversation = await new_conversation(alice, ada)

    def update(paths: list[str], **fields: object) -> pb.UpdateConversationRequest:
        changes = pb.Conversation(id=conversation.id, etag=conversation.etag, **fields)  # type: ignore[arg-type]
        return pb.UpdateConversationRequest(conversation=changes, update_mask=FieldMask(paths=paths))

    foreign = await refused(
        alice.stub.UpdateConversation(update(["participant_agent_ids"], participant_agent_ids=[theirs.id]))
    )
    assert foreign.code() == grpc.StatusCode.FAILED_PRECONDITION
    no_coordinator = await refused(
        alice.stub.UpdateConversation(update(["turn_policy"], turn_policy=pb.TURN_POLICY_COORDINATOR))
    )
    assert no_coordinator.code() == grpc.StatusCode.FAILED_PRECONDITION
    limits = pb.ConversationLimits(max_agent_turns_per_user_message=5)
    updated = (
        await alice.stub.UpdateConversation(
            update(
                [
                    "participant_agent_ids",
                    "turn_policy",
                    "coordinator_agent_id",
                    "limits.max_agent_turns_per_user_message",
                ],
                participant_agent_ids=[ada.id, bea.id],
                turn_policy=pb.TURN_POLICY_COORDINATOR,
                coordinator_agent_id=bea.id,
                limits=limits,
                title="ignored: not in the mask",
            )
        )
    ).conversation
    assert list(updated.participant_agent_ids) == [ada.id, bea.id]
    assert (updated.turn_policy, updated.coordinator_agent_id) == (pb.TURN_POLICY_COORDINATOR, bea.id)
    assert updated.limits.max_agent_turns_per_user_message == 5
    assert updated.title == conversation.title
    stale = await refused(alice.stub.UpdateConversation(update(["title"], title="again")))
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        await alice.stub.GetConversation(pb.GetConversationRequest(id=conversation.id))
    ).conversation == updated


async def test_list_filters_by_status_and_agent_and_an_archived_one_is_read_only(world: World) -> None:
    alice = world.alice
    ada, bea = await new_agent(alice, "Ada"), await new_agent(alice, "Bea")
    first = await new_conversation(alice, ada)
    second = await new_conversation(alice, ada, bea)
    closed = (
        await alice.stub.ArchiveConversation(
            pb.ArchiveConversationRequest(conversation_id=first.id, close=True)
        )
    ).conversation
    assert closed.status == pb.CONVERSATION_STATUS_ARCHIVED
    assert closed.HasField("archive_time")

    async def ids(**filters: object) -> list[str]:
        page = await alice.stub.ListConversations(pb.ListConversationsRequest(**filters))  # type: ignore[arg-type]
        return [c.id for c in page.conversations]

    assert await ids() == [first.id, second.id]
    assert await ids(status=pb.CONVERSATION_STATUS_ACTIVE) == [second.id]
    assert await ids(status=pb.CONVERSATION_STATUS_ARCHIVED) == [first.id]
    assert await ids(agent_id=bea.id) == [second.id]
    pages: list[str] = []
    token = ""
    while True:
        page = await alice.stub.ListConversations(pb.ListConversationsRequest(page_size=1, page_token=token))
        pages += [c.id for c in page.conversations]
        token = page.next_page_token
        if not token:
            break
    assert pages == [first.id, second.id]

    changes = pb.Conversation(id=first.id, etag=closed.etag, title="new")
    read_only = await refused(
        alice.stub.UpdateConversation(
            pb.UpdateConversationRequest(conversation=changes, update_mask=FieldMask(paths=["title"]))
        )
    )
    assert read_only.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "archived" in (read_only.details() or "")


async def test_delete_is_soft_and_hides_the_conversation_and_its_messages(world: World) -> None:
    alice = world.alice
    conversation = await new_conversation(alice, await new_agent(alice))
    message = pb.Message(
        id=str(uuid.uuid4()),
        conversation_id=conversation.id,
        role=pb.MESSAGE_ROLE_USER,
        author_id=alice.user_id,
        text="hello",
    )
    await alice.stub.AppendMessage(pb.AppendMessageRequest(message=message))
    stale = await refused(
        alice.stub.DeleteConversation(pb.DeleteConversationRequest(id=conversation.id, etag="x"))
    )
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    await alice.stub.GetConversation(pb.GetConversationRequest(id=conversation.id))  # fills the cache
    await alice.stub.DeleteConversation(
        pb.DeleteConversationRequest(id=conversation.id, etag=conversation.etag)
    )
    for call in (
        alice.stub.GetConversation(pb.GetConversationRequest(id=conversation.id)),
        alice.stub.ListMessages(pb.ListMessagesRequest(conversation_id=conversation.id)),
        alice.stub.AppendMessage(pb.AppendMessageRequest(message=message)),
        alice.stub.ArchiveConversation(pb.ArchiveConversationRequest(conversation_id=conversation.id)),
        alice.stub.ListArchives(pb.ListArchivesRequest(conversation_id=conversation.id)),
        alice.stub.DeleteConversation(pb.DeleteConversationRequest(id=conversation.id)),
    ):
        assert (await refused(call)).code() == grpc.StatusCode.NOT_FOUND
    listed = await alice.stub.ListConversations(pb.ListConversationsRequest())
    assert conversation.id not in [c.id for c in listed.conversations]
