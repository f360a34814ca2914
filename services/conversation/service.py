"""Wiring of the conversation service: its registry entry, its start hook, its migrations, its scopes.

Scopes: every call needs a token for `urn:macp:service:conversation`; reads (`Get*`, `List*`) also
need `conversations:read` and every other RPC (the writes) `conversations:write`. Agents are
conversation resources, so they share these two scopes. Webhook subscriptions too
(WebhookService: reads `conversations:read`, writes `conversations:write`), but for the deliverers'
two RPCs, which need `webhooks:deliver` (services/conversation/webhooks.py).

`start` builds the domain on the pool, the cache and the bucket and adds the servicer; nothing runs
beside the RPCs, so there is nothing to stop when it is left.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from macp.conversation.v1 import conversation_service_pb2 as pb
from macp.conversation.v1 import conversation_service_pb2_grpc as pb_grpc
from macp.conversation.v1 import webhook_service_pb2 as webhook_pb
from macp.conversation.v1 import webhook_service_pb2_grpc as webhook_grpc

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
from services.conversation.webhook_servicer import WebhookServicer
from services.conversation.webhook_settings import WebhookSettings
from services.conversation.webhook_store import WebhookStore
from services.conversation.webhooks import Webhooks
from services.runtime import resource_cache
from services.runtime.registry import service
from services.runtime.server import ServiceContext, ServiceDefinition
from services.runtime.webhook_secrets import DELIVER_SCOPE

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
    webhooks = Webhooks(WebhookStore(db), conversations, WebhookSettings.from_env(context.env))
    webhook_grpc.add_WebhookServiceServicer_to_server(WebhookServicer(webhooks), context.server)
    yield


DELIVERER_RPCS = ("ListDeliveryTargets", "RecordDeliveryAttempt")


def method_scopes() -> dict[str, str]:
    """Each ConversationService and WebhookService method to the scope it needs: reads
    `conversations:read`, writes `conversations:write`, the webhook deliverers' `webhooks:deliver`."""
    scopes: dict[str, str] = {}
    for descriptor in (
        pb.DESCRIPTOR.services_by_name["ConversationService"],
        webhook_pb.DESCRIPTOR.services_by_name["WebhookService"],
    ):
        for method in descriptor.methods:
            if method.name in DELIVERER_RPCS:
                scope = DELIVER_SCOPE
            elif method.name.startswith(("Get", "List")):
                scope = READ_SCOPE
            else:
                scope = WRITE_SCOPE
            scopes[f"/{descriptor.full_name}/{method.name}"] = scope
    return scopes


DEFINITION = ServiceDefinition(
    spec=SPEC,
    start=start,
    own_settings=ConversationSettings.from_env,
    migrations_dir=Path(__file__).parent / "migrations",
    method_scopes=method_scopes(),
)
