"""Archives: the transcript as JSON Lines in the real S3 server, its record in Postgres, and the
presigned URL fetched back over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, datetime

import grpc
import httpx
import pytest
from google.protobuf.duration_pb2 import Duration
from macp.conversation.v1 import conversation_service_pb2 as pb

from services.runtime.s3 import create_s3_client
from services.runtime.settings import Env, S3Settings
from tests.conversation.conftest import World, new_agent, new_conversation, refused

pytestmark = pytest.mark.integration


async def test_archive_round_trip(world: World) -> None:
    alice = world.alice
    agent = await new_agent(alice)
    conversation = await new_conversation(alice, agent)
    texts = ["hello", "ünïcode ✓", 'quotes " and \\ backslashes\nand a newline']
    for text in texts:
        message = pb.Message(
            id=str(uuid.uuid4()),
            conversation_id=conversation.id,
            role=pb.MESSAGE_ROLE_USER,
            author_id=alice.user_id,
            text=text,
        )
        await alice.stub.AppendMessage(pb.AppendMessageRequest(message=message))

    reply = await alice.stub.ArchiveConversation(
        pb.ArchiveConversationRequest(conversation_id=conversation.id, url_ttl=Duration(seconds=120))
    )
    archive = reply.archive
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert archive.object_key == (
        f"tenants/{alice.tenant_id}/conversations/{conversation.id}/{today}/{archive.id}.jsonl"
    )
    assert (archive.message_count, archive.last_sequence) == (3, 3)
    assert archive.bucket == world.environ["MACP_S3_BUCKET"]
    assert reply.conversation.archive_key == archive.object_key
    assert reply.conversation.status == pb.CONVERSATION_STATUS_ACTIVE  # not closed
    expires = reply.presigned_url_expire_time.ToDatetime(tzinfo=UTC)
    assert 100 < (expires - datetime.now(UTC)).total_seconds() <= 120

    async with httpx.AsyncClient(trust_env=False) as client:
        fetched = await client.get(reply.presigned_url)
    assert fetched.status_code == 200, fetched.text
    body = fetched.content
    assert len(body) == archive.size_bytes
    assert hashlib.sha256(body).hexdigest() == archive.sha256
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert [line["text"] for line in lines] == texts
    assert [line["sequence"] for line in lines] == ["1", "2", "3"]

    # The object is where the record says, in the bucket from the settings.
    s3 = create_s3_client(S3Settings.from_env(Env(world.environ)))
    head = await asyncio.to_thread(s3.head_object, Bucket=archive.bucket, Key=archive.object_key)
    assert head["ContentType"] == "application/x-ndjson"
    assert head["ContentLength"] == archive.size_bytes

    # Listed and fetched back with a fresh URL; the conversation's cached copy shows the archive key.
    later = await alice.stub.ArchiveConversation(
        pb.ArchiveConversationRequest(conversation_id=conversation.id)
    )
    listed = await alice.stub.ListArchives(pb.ListArchivesRequest(conversation_id=conversation.id))
    assert [a.id for a in listed.archives] == [archive.id, later.archive.id]
    paged = await alice.stub.ListArchives(
        pb.ListArchivesRequest(conversation_id=conversation.id, page_size=1)
    )
    assert [a.id for a in paged.archives] == [archive.id]
    assert paged.next_page_token
    got = await alice.stub.GetArchive(pb.GetArchiveRequest(id=archive.id))
    assert got.archive == archive
    async with httpx.AsyncClient(trust_env=False) as client:
        again = await client.get(got.presigned_url)
    assert again.content == body
    current = (await alice.stub.GetConversation(pb.GetConversationRequest(id=conversation.id))).conversation
    assert current.archive_key == later.archive.object_key


async def test_archive_with_a_stale_etag_writes_nothing(world: World) -> None:
    alice = world.alice
    conversation = await new_conversation(alice, await new_agent(alice))
    stale = await refused(
        alice.stub.ArchiveConversation(
            pb.ArchiveConversationRequest(conversation_id=conversation.id, etag="stale", close=True)
        )
    )
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = await alice.stub.ListArchives(pb.ListArchivesRequest(conversation_id=conversation.id))
    assert list(listed.archives) == []
    s3 = create_s3_client(S3Settings.from_env(Env(world.environ)))
    objects = await asyncio.to_thread(
        s3.list_objects_v2, Bucket=world.environ["MACP_S3_BUCKET"], Prefix=f"tenants/{alice.tenant_id}/"
    )
    assert objects.get("KeyCount", 0) == 0
    closed = await alice.stub.ArchiveConversation(
        pb.ArchiveConversationRequest(conversation_id=conversation.id, etag=conversation.etag, close=True)
    )
    assert closed.conversation.status == pb.CONVERSATION_STATUS_ARCHIVED
    unknown = await refused(alice.stub.GetArchive(pb.GetArchiveRequest(id=str(uuid.uuid4()))))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
