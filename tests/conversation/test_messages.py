"""Messages: idempotent appends by the client's id, gap-free sequences under concurrency, pages in order."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from macp.conversation.v1 import conversation_service_pb2 as pb

from tests.conversation.conftest import Caller, World, new_agent, new_conversation, refused, stored_messages

pytestmark = pytest.mark.integration


def user_message(
    caller: Caller, conversation_id: str, text: str, message_id: str | None = None
) -> pb.Message:
    return pb.Message(
        id=message_id or str(uuid.uuid4()),
        conversation_id=conversation_id,
        role=pb.MESSAGE_ROLE_USER,
        author_id=caller.user_id,
        text=text,
    )


async def test_append_retried_ten_times_stores_one_message(world: World) -> None:
    alice = world.alice
    conversation = await new_conversation(alice, await new_agent(alice))
    message = user_message(alice, conversation.id, "hello")
    first = await alice.stub.AppendMessage(pb.AppendMessageRequest(message=message))
    assert first.created
    assert first.message.sequence == 1
    # Ten retries, five of them at once: the stored message comes back each time, created=false.
    sequential = [await alice.stub.AppendMessage(pb.AppendMessageRequest(message=message)) for _ in range(5)]
    concurrent = await asyncio.gather(
        *(alice.stub.AppendMessage(pb.AppendMessageRequest(message=message)) for _ in range(5))
    )
    for retry in [*sequential, *concurrent]:
        assert not retry.created
        assert retry.message == first.message
    assert await stored_messages(world.environ["MACP_DATABASE_URL"], conversation.id) == 1

    other = pb.Message()
    other.CopyFrom(message)
    other.text = "something else"
    conflict = await refused(alice.stub.AppendMessage(pb.AppendMessageRequest(message=other)))
    assert conflict.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "message.id" in (conflict.details() or "")
    assert await stored_messages(world.environ["MACP_DATABASE_URL"], conversation.id) == 1
    # Further cases on the same running service (one set-up for all of them).
    await _concurrent_first_attempts_store_once(world)
    await _an_archived_conversation_accepts_no_messages_but_answers_retries(world)


async def _concurrent_first_attempts_store_once(world: World) -> None:
    alice = world.alice
    conversation = await new_conversation(alice, await new_agent(alice))
    message = user_message(alice, conversation.id, "race")
    replies = await asyncio.gather(
        *(alice.stub.AppendMessage(pb.AppendMessageRequest(message=message)) for _ in range(6))
    )
    assert sum(reply.created for reply in replies) == 1
    assert len({reply.message.sequence for reply in replies}) == 1
    assert await stored_messages(world.environ["MACP_DATABASE_URL"], conversation.id) == 1


async def test_sequences_are_gap_free_under_concurrent_appends_and_list_pages_in_order(world: World) -> None:
    alice = world.alice
    agent = await new_agent(alice)
    conversation = await new_conversation(alice, agent)
    texts = [f"m{i}" for i in range(30)]
    await asyncio.gather(
        *(
            alice.stub.AppendMessage(pb.AppendMessageRequest(message=user_message(alice, conversation.id, t)))
            for t in texts
        )
    )
    reply = pb.Message(
        id=str(uuid.uuid4()),
        conversation_id=conversation.id,
        role=pb.MESSAGE_ROLE_AGENT,
        author_id=agent.id,
        text="an agent speaks",
        turn_id=str(uuid.uuid4()),
    )
    await alice.stub.AppendMessage(pb.AppendMessageRequest(message=reply))
    listed: list[pb.Message] = []
    token = ""
    while True:
        page = await alice.stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=conversation.id, page_size=7, page_token=token)
        )
        listed += page.messages
        token = page.next_page_token
        if not token:
            break
    assert [m.sequence for m in listed] == list(range(1, 32))
    assert sorted(m.text for m in listed[:30]) == sorted(texts)
    assert listed[-1].author_id == agent.id

    other = await new_conversation(alice, agent)
    first = await alice.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation.id, page_size=1)
    )
    replayed = await refused(
        alice.stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=other.id, page_token=first.next_page_token)
        )
    )
    assert replayed.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Newest first pages the same messages backwards, and a token keeps to the order it came from.
    newest: list[pb.Message] = []
    token = ""
    while True:
        page = await alice.stub.ListMessages(
            pb.ListMessagesRequest(
                conversation_id=conversation.id, page_size=7, page_token=token, order_by="sequence desc"
            )
        )
        newest += page.messages
        token = page.next_page_token
        if not token:
            break
    assert [m.sequence for m in newest] == list(range(31, 0, -1))
    assert [m.id for m in reversed(newest)] == [m.id for m in listed]
    backwards = await alice.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation.id, page_size=1, order_by="sequence desc")
    )
    mixed = await refused(
        alice.stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=conversation.id, page_token=backwards.next_page_token)
        )
    )
    assert mixed.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = await refused(
        alice.stub.ListMessages(pb.ListMessagesRequest(conversation_id=conversation.id, order_by="text"))
    )
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "order_by" in (unknown.details() or "")


async def test_authors_are_checked(world: World) -> None:
    alice = world.alice
    agent, outsider = await new_agent(alice, "in"), await new_agent(alice, "out")
    conversation = await new_conversation(alice, agent)
    impostor = user_message(alice, conversation.id, "hi")
    impostor.author_id = "someone-else"
    bad = await refused(alice.stub.AppendMessage(pb.AppendMessageRequest(message=impostor)))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "author_id" in (bad.details() or "")
    stranger = pb.Message(
        id=str(uuid.uuid4()),
        conversation_id=conversation.id,
        role=pb.MESSAGE_ROLE_AGENT,
        author_id=outsider.id,
        text="not invited",
    )
    assert (await refused(alice.stub.AppendMessage(pb.AppendMessageRequest(message=stranger)))).code() == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    missing_text = user_message(alice, conversation.id, "")
    invalid = await refused(alice.stub.AppendMessage(pb.AppendMessageRequest(message=missing_text)))
    assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text" in (invalid.details() or "")
    assert await stored_messages(world.environ["MACP_DATABASE_URL"], conversation.id) == 0


async def _an_archived_conversation_accepts_no_messages_but_answers_retries(world: World) -> None:
    alice = world.alice
    conversation = await new_conversation(alice, await new_agent(alice))
    message = user_message(alice, conversation.id, "last words")
    await alice.stub.AppendMessage(pb.AppendMessageRequest(message=message))
    await alice.stub.ArchiveConversation(
        pb.ArchiveConversationRequest(conversation_id=conversation.id, close=True)
    )
    retry = await alice.stub.AppendMessage(pb.AppendMessageRequest(message=message))
    assert not retry.created
    late = await refused(
        alice.stub.AppendMessage(
            pb.AppendMessageRequest(message=user_message(alice, conversation.id, "late"))
        )
    )
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await stored_messages(world.environ["MACP_DATABASE_URL"], conversation.id) == 1
