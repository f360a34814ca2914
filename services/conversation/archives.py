"""Archives: a conversation's transcript as JSON Lines in S3, recorded in Postgres, fetched back by
presigned URL (the client downloads from S3 directly; the transcript never streams through the mesh).

Object keys are `tenants/<tenant>/conversations/<conversation>/<yyyy-mm-dd>/<archive>.jsonl`: a
tenant's (or one conversation's) transcripts share a prefix, so retention, export or a bucket
policy can address them, and the date groups them for lifecycle rules.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from macp.conversation.v1 import conversation_service_pb2 as pb

from services.conversation.archive_store import ArchiveRequest, ArchiveStore
from services.conversation.conversations import Conversations, audited, not_found, stale_etag
from services.runtime import audit
from services.runtime.errors import NotFound
from services.runtime.ids import new_etag, parse_id
from services.runtime.paging import decode_page_token, filter_digest, page_size, time_key, time_page
from services.runtime.principal import Principal
from services.runtime.protos import timestamp

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CONTENT_TYPE = "application/x-ndjson"
DEFAULT_URL_TTL = timedelta(minutes=15)


def transcript(messages: list[pb.Message]) -> bytes:
    """One JSON object per line: each message in the proto3 JSON mapping, in sequence order."""
    lines = [json.dumps(json_format.MessageToDict(message), separators=(",", ":")) for message in messages]
    return "".join(line + "\n" for line in lines).encode()


def object_key(tenant_id: str, conversation_id: str, archive_id: str, day: datetime) -> str:
    return f"tenants/{tenant_id}/conversations/{conversation_id}/{day:%Y-%m-%d}/{archive_id}.jsonl"


def _ttl(duration: Duration | None) -> timedelta:
    return DEFAULT_URL_TTL if duration is None else duration.ToTimedelta()


class Archives:
    def __init__(
        self,
        store: ArchiveStore,
        conversations: Conversations,
        s3: S3Client,
        bucket: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._conversations = conversations
        self._s3 = s3
        self._bucket = bucket
        self._clock = clock

    async def _upload(self, conversation: pb.Conversation, messages: list[pb.Message]) -> pb.Archive:
        body = transcript(messages)
        archive_id = str(uuid.uuid4())
        key = object_key(conversation.tenant_id, conversation.id, archive_id, self._clock())
        digest = hashlib.sha256(body).hexdigest()
        await asyncio.to_thread(
            self._s3.put_object, Bucket=self._bucket, Key=key, Body=body, ContentType=CONTENT_TYPE
        )
        return pb.Archive(
            id=archive_id,
            conversation_id=conversation.id,
            tenant_id=conversation.tenant_id,
            bucket=self._bucket,
            object_key=key,
            content_type=CONTENT_TYPE,
            size_bytes=len(body),
            message_count=len(messages),
            last_sequence=messages[-1].sequence if messages else 0,
            sha256=digest,
        )

    async def _presigned(self, archive: pb.Archive, ttl: timedelta) -> tuple[str, datetime]:
        url = await asyncio.to_thread(
            self._s3.generate_presigned_url,
            "get_object",
            Params={"Bucket": archive.bucket, "Key": archive.object_key},
            ExpiresIn=int(ttl.total_seconds()),
        )
        return url, self._clock() + ttl

    async def archive(
        self, principal: Principal, request: pb.ArchiveConversationRequest
    ) -> pb.ArchiveConversationResponse:
        key = parse_id(request.conversation_id, "conversation_id")
        outcome = await self._store.archive(
            ArchiveRequest(principal.tenant_id, key, request.etag, request.close, new_etag()),
            self._upload,
            audited(principal, audit.CONVERSATION_ARCHIVE, str(key)),
        )
        if outcome.conversation is None:
            raise not_found(request.conversation_id)
        if not outcome.etag_matched or outcome.archive is None:
            raise stale_etag(request.conversation_id)
        await self._conversations.invalidate(principal, str(key))
        url, expires = await self._presigned(
            outcome.archive, _ttl(request.url_ttl if request.HasField("url_ttl") else None)
        )
        return pb.ArchiveConversationResponse(
            archive=outcome.archive,
            presigned_url=url,
            presigned_url_expire_time=timestamp(expires),
            conversation=outcome.conversation,
        )

    async def list(self, principal: Principal, request: pb.ListArchivesRequest) -> pb.ListArchivesResponse:
        conversation = await self._conversations.get(principal, request.conversation_id)
        digest = filter_digest("archives", principal.tenant_id, conversation.id)
        after = time_key(decode_page_token(request.page_token, digest))
        size = page_size(request.page_size)
        found = await self._store.list(
            principal.tenant_id, parse_id(conversation.id, "conversation_id"), after, size + 1
        )
        archives, next_page_token = time_page(found, size, digest)
        return pb.ListArchivesResponse(archives=archives, next_page_token=next_page_token)

    async def get(self, principal: Principal, request: pb.GetArchiveRequest) -> pb.GetArchiveResponse:
        archive = await self._store.get(principal.tenant_id, parse_id(request.id, "id"))
        if archive is None:
            raise NotFound(f"archive {request.id} not found")
        url, expires = await self._presigned(
            archive, _ttl(request.url_ttl if request.HasField("url_ttl") else None)
        )
        return pb.GetArchiveResponse(
            archive=archive, presigned_url=url, presigned_url_expire_time=timestamp(expires)
        )
