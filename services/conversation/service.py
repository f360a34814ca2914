"""Wiring of the conversation service: its registry entry, its start hook, its migrations, its scopes.

Scopes: every call needs a token for `urn:macp:service:conversation`; reads (`Get*`, `List*`) also
need `conversations:read` and every other RPC (the writes) `conversations:write`. Agents are
conversation resources, so they share these two scopes.

`start` builds the domain on the pool, the cache and the bucket and adds the servicer; nothing runs
beside the RPCs, so there is nothing to stop when it is left.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from macp.conversation.v1 import conversation_service_pb2 as pb
from macp.conversation.v1 import conversation_service_pb2_grpc as pb_grpc

from services.conversation.agent_remotes import AgentRemotes
from services.conversation.agent_store import AgentStore
from services.conversation.agents import Agents
from services.conversation.archive_store import ArchiveStore
from services.conversation.archives import Archives
from services.conversation.cache import ResourceCache
from services.conversation.conversation_store import ConversationStore
from services.conversation.conversations import Conversations
from services.conversation.message_store import MessageStore
from services.conversation.messages import Messages
from services.conversation.servicer import ConversationServicer
from services.conversation.settings import ConversationSettings
from services.runtime import resource_cache
from services.runtime.registry import service
from services.runtime.server import ServiceContext, ServiceDefinition

SPEC = service("conversation")
READ_SCOPE = resource_cache.READ_SCOPE
WRITE_SCOPE = "conversations:write"


@asynccontextmanager
async def start(context: ServiceContext) -> AsyncIterator[None]:
    settings = ConversationSettings.from_env(context.env)
    resources = context.resources
    db = resources.require_db()
    redis = resources.require_redis()
    prefix = resources.redis_key_prefix
    s3, s3_settings = resources.require_s3()

    def cache(kind: str) -> ResourceCache:
        return ResourceCache(redis, prefix, kind, settings.cache_ttl_seconds)

    agents = Agents(AgentStore(db), cache(resource_cache.AGENT), AgentRemotes(settings.a2a_sealing_key))
    conversations = Conversations(ConversationStore(db), cache(resource_cache.CONVERSATION))
    messages = Messages(MessageStore(db), conversations)
    archives = Archives(ArchiveStore(db), conversations, s3, s3_settings.bucket)
    servicer = ConversationServicer(agents, conversations, messages, archives)
    pb_grpc.add_ConversationServiceServicer_to_server(servicer, context.server)
    yield


def method_scopes() -> dict[str, str]:
    """Each ConversationService method to the scope it needs: reads `conversations:read`, writes
    `conversations:write`."""
    descriptor = pb.DESCRIPTOR.services_by_name["ConversationService"]
    return {
        f"/{descriptor.full_name}/{method.name}": READ_SCOPE
        if method.name.startswith(("Get", "List"))
        else WRITE_SCOPE
        for method in descriptor.methods
    }


DEFINITION = ServiceDefinition(
    spec=SPEC,
    start=start,
    own_settings=ConversationSettings.from_env,
    migrations_dir=Path(__file__).parent / "migrations",
    method_scopes=method_scopes(),
)
