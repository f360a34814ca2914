"""Webhook subscription rules: which endpoints may be subscribed, to what, and who reads the secrets.

A subscription's URL is https; http only for a loopback host (127.0.0.0/8, ::1, localhost) and only
where the deployment allows it (`MACP_WEBHOOKS_ALLOW_LOOPBACK_HTTP`, on for `macp up` and tests),
so a deliverer never posts a conversation in clear text over a network. Its event kinds are
ConversationEvent payload names; none given means every kind but the streamed pieces, `token_delta`
and `speech_audio` (a delivery per token or per tenth of a second of audio is rarely what an
endpoint wants, so they have to be asked for). A conversation named must be
one of the tenant's (NOT_FOUND naming the field otherwise, as for any other tenant's resource).

The signing secret is made here (Standard Webhooks: `whsec_` + base64 of 32 random bytes), shown
once in the create answer and kept sealed (services/runtime/webhook_secrets.py). The deliverers'
RPCs hand sealed secrets of every tenant out, so they are served only to a direct token of one of
MACP's own internal clients holding `webhooks:deliver` (services/conversation/service.py names the
scope), never to a user's token exchanged by a service.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from urllib.parse import urlsplit

from macp.common.v1 import principal_pb2
from macp.conversation.v1 import webhook_service_pb2 as pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as orchestrator_pb

from services.conversation.conversations import Conversations
from services.conversation.webhook_settings import WebhookSettings
from services.conversation.webhook_store import StoredTarget, WebhookStore
from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, StaleEtag
from services.runtime.ids import new_etag, parse_id
from services.runtime.paging import decode_page_token, filter_digest, page_size, time_key, time_page
from services.runtime.principal import Principal
from services.runtime.sealing import GENERATE_HINT, Sealer
from services.runtime.webhook_addresses import LOOPBACK_NAMES, literal_address, refusal
from services.runtime.webhook_secrets import SEALING_KEY, SECRET_PREFIX, associated_data

FIELD = "webhook_subscription"
# The kinds that stream an answer piece by piece: delivered only when named.
STREAMED_KINDS = frozenset({"token_delta", "speech_audio"})
# Every payload kind of a ConversationEvent, from the contract itself.
EVENT_KINDS = tuple(
    field.name for field in orchestrator_pb.ConversationEvent.DESCRIPTOR.oneofs_by_name["payload"].fields
)
DEFAULT_EVENT_KINDS = tuple(kind for kind in EVENT_KINDS if kind not in STREAMED_KINDS)


def not_found(subscription_id: str) -> NotFound:
    # Another tenant's subscription is reported exactly like a missing one.
    return NotFound(f"webhook subscription {subscription_id} not found")


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _is_loopback(host: str) -> bool:
    address = literal_address(host)
    return host.lower() in LOOPBACK_NAMES or (address is not None and address.is_loopback)


def _audited(principal: Principal, action: str, subscription_id: str, **detail: str) -> AuditEvent:
    return AuditEvent(Who.of(principal), action, f"webhook/{subscription_id}", detail=detail)


class Webhooks:
    def __init__(self, store: WebhookStore, conversations: Conversations, settings: WebhookSettings) -> None:
        self._store = store
        self._conversations = conversations
        self._settings = settings
        key = settings.sealing_key
        self._sealer = None if key is None else Sealer(key)

    async def create(self, principal: Principal, draft: pb.WebhookSubscription) -> pb.WebhookSubscription:
        self._check_url(draft.url)
        kinds = self._event_kinds(draft.event_kinds)
        if draft.conversation_id:
            await self._check_conversation(principal, draft.conversation_id)
        if self._sealer is None:
            raise FailedPrecondition(
                f"{FIELD}: this service keeps no webhook secrets: {SEALING_KEY} is not set (set it on the "
                f"conversation service and the orchestrator to 32 random bytes in base64url: {GENERATE_HINT})"
            )
        subscription = pb.WebhookSubscription(
            id=str(uuid.uuid4()),
            tenant_id=principal.tenant_id,
            url=draft.url,
            conversation_id=draft.conversation_id,
            event_kinds=kinds,
            etag=new_etag(),
        )
        secret = new_secret()
        sealed = self._sealer.seal(secret.encode(), associated_data(subscription.tenant_id, subscription.id))
        audited = _audited(principal, audit.WEBHOOK_CREATE, subscription.id, url=subscription.url)
        created = await self._store.insert(subscription, sealed, audited)
        created.secret = secret
        return created

    async def get(self, principal: Principal, subscription_id: str) -> pb.WebhookSubscription:
        found = await self._store.get(principal.tenant_id, parse_id(subscription_id, "id"))
        if found is None:
            raise not_found(subscription_id)
        return found

    async def list(
        self, principal: Principal, request: pb.ListWebhookSubscriptionsRequest
    ) -> pb.ListWebhookSubscriptionsResponse:
        digest = filter_digest("webhook-subscriptions", principal.tenant_id)
        after = time_key(decode_page_token(request.page_token, digest))
        size = page_size(request.page_size)
        found = await self._store.list(principal.tenant_id, after, size + 1)
        subscriptions, next_page_token = time_page(found, size, digest)
        return pb.ListWebhookSubscriptionsResponse(
            webhook_subscriptions=subscriptions, next_page_token=next_page_token
        )

    async def delete(self, principal: Principal, subscription_id: str, etag: str) -> None:
        key = parse_id(subscription_id, "id")
        audited = _audited(principal, audit.WEBHOOK_DELETE, str(key))
        found, deleted = await self._store.delete(principal.tenant_id, key, etag, audited)
        if not found:
            raise not_found(subscription_id)
        if not deleted:
            raise StaleEtag(
                f"webhook subscription {subscription_id} changed since it was read (etag mismatch); "
                "read it again"
            )

    async def deliveries(
        self, principal: Principal, request: pb.ListWebhookDeliveriesRequest
    ) -> Sequence[pb.WebhookDelivery]:
        key = parse_id(request.subscription_id, "subscription_id")
        if await self._store.get(principal.tenant_id, key) is None:
            raise not_found(request.subscription_id)
        return await self._store.deliveries(
            principal.tenant_id, key, request.status, page_size(request.page_size)
        )

    async def targets(self, principal: Principal, active_since: datetime) -> Sequence[StoredTarget]:
        _check_deliverer(principal)
        return await self._store.targets(active_since)

    async def record(self, principal: Principal, tenant_id: str, delivery: pb.WebhookDelivery) -> None:
        _check_deliverer(principal)
        parse_id(delivery.subscription_id, "delivery.subscription_id")
        parse_id(delivery.conversation_id, "delivery.conversation_id")
        if delivery.status == pb.WEBHOOK_DELIVERY_STATUS_UNSPECIFIED or delivery.attempts < 1:
            raise InvalidArgument("delivery: a status and at least one attempt are required")
        await self._store.record(tenant_id, delivery)

    def _check_url(self, url: str) -> None:
        if not url:
            raise InvalidArgument(f"{FIELD}.url: value is required")
        parts = urlsplit(url)
        host = parts.hostname or ""
        if not host:
            raise InvalidArgument(f"{FIELD}.url: {url!r} names no host")
        # A literal internal address is refused now; a name is checked where it is delivered to
        # (services/runtime/webhook_addresses.py).
        address = literal_address(host)
        if address is not None:
            reason = refusal(address, loopback_allowed=self._settings.allow_loopback_http)
            if reason is not None:
                raise InvalidArgument(f"{FIELD}.url: {reason}; webhooks go to public addresses only")
        if parts.scheme == "https":
            return
        if parts.scheme == "http" and _is_loopback(host):
            if self._settings.allow_loopback_http:
                return
            raise InvalidArgument(
                f"{FIELD}.url: http is refused here (this deployment does not allow loopback http); use https"
            )
        raise InvalidArgument(f"{FIELD}.url: must be an https URL, not {parts.scheme or 'schemeless'}")

    @staticmethod
    def _event_kinds(kinds: Iterable[str]) -> Sequence[str]:
        given = list(kinds)
        unknown = [kind for kind in given if kind not in EVENT_KINDS]
        if unknown:
            raise InvalidArgument(
                f"{FIELD}.event_kinds: unknown event kind {', '.join(unknown)} "
                f"(one of {', '.join(EVENT_KINDS)})"
            )
        return given or list(DEFAULT_EVENT_KINDS)

    async def _check_conversation(self, principal: Principal, conversation_id: str) -> None:
        try:
            await self._conversations.get(principal, conversation_id)
        except NotFound:
            raise NotFound(f"{FIELD}.conversation_id: conversation {conversation_id} not found") from None


def _check_deliverer(principal: Principal) -> None:
    """Only a direct token of an internal client: the scope is checked before the handler, and a
    user's token (or one a service exchanged for a user) is refused whatever scopes it carries."""
    if (
        principal.client_class != principal_pb2.CLIENT_CLASS_INTERNAL
        or principal.user_id
        or len(principal.actor_chain) > 0
    ):
        raise PermissionDenied(
            "only MACP's own webhook deliverers may read delivery targets or record deliveries"
        )
