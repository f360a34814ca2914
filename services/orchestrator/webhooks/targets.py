"""The conversation service as the deliverers see it: the subscriptions to deliver (with their
secrets, sealed) and the record of what became of a delivery.

No user is behind a delivery, so these calls carry the orchestrator's own token: a client
credentials token of its own internal client (registered on first use, like the orchestrator's
round client) for the conversation service, with `webhooks:deliver`, the one scope the
conversation service asks of them (services/conversation/webhooks.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from macp.conversation.v1 import webhook_service_pb2 as pb
from macp.conversation.v1 import webhook_service_pb2_grpc as pb_grpc
from macp.token.v1 import token_service_pb2_grpc as token_grpc

from services.orchestrator.webhooks.signing import secret_key
from services.runtime.auth.settings import service_audience
from services.runtime.auth.token_client import CLIENT_CREDENTIALS_GRANT, ClientRegistration, TokenClient
from services.runtime.mesh import open_mesh_channel
from services.runtime.protos import timestamp_at
from services.runtime.sealing import Sealer
from services.runtime.webhook_secrets import DELIVER_SCOPE, associated_data

REGISTRATION = ClientRegistration(
    name="macp orchestrator webhooks", scopes=(DELIVER_SCOPE,), grant_types=(CLIENT_CREDENTIALS_GRANT,)
)
CONVERSATION_AUDIENCE = service_audience("conversation")


@dataclass(frozen=True)
class Target:
    """A subscription ready to deliver: its kinds, URL and opened signing key."""

    subscription: pb.WebhookSubscription
    key: bytes
    conversation_ids: tuple[str, ...]

    @property
    def subscription_id(self) -> str:
        return self.subscription.id

    def wants(self, kind: str) -> bool:
        return kind in self.subscription.event_kinds


class Targets:
    def __init__(
        self,
        mesh_address: str,
        sealing_key: bytes,
        *,
        initial_access_token: str | None,
        timeout: float,
    ) -> None:
        # The calls authenticate the orchestrator itself, never a caller: no caller tokens.
        self._channel = open_mesh_channel(mesh_address)
        self._stub = pb_grpc.WebhookServiceStub(self._channel)
        self._tokens = TokenClient(
            token_grpc.TokenServiceStub(self._channel),
            registration=REGISTRATION,
            credentials=None,
            initial_access_token=initial_access_token,
            timeout=timeout,
        )
        self._sealer = Sealer(sealing_key)
        self._timeout = timeout

    async def close(self) -> None:
        await self._channel.close()

    async def _metadata(self) -> tuple[tuple[str, str], ...]:
        token = await self._tokens.own_token(CONVERSATION_AUDIENCE, DELIVER_SCOPE)
        return (("authorization", f"Bearer {token}"),)

    async def fetch(self, active_seconds: float) -> list[Target]:
        """Every subscription, a tenant-wide one with its conversations active in the last
        `active_seconds` (those whose event logs may still hold something)."""
        reply = await self._stub.ListDeliveryTargets(
            pb.ListDeliveryTargetsRequest(active_since=timestamp_at(time.time() - active_seconds)),
            metadata=await self._metadata(),
            timeout=self._timeout,
        )
        targets = []
        for target in reply.targets:
            subscription = target.subscription
            secret = self._sealer.open(
                target.sealed_secret, associated_data(subscription.tenant_id, subscription.id)
            )
            targets.append(Target(subscription, secret_key(secret.decode()), tuple(target.conversation_ids)))
        return targets

    async def record(self, tenant_id: str, delivery: pb.WebhookDelivery) -> None:
        await self._stub.RecordDeliveryAttempt(
            pb.RecordDeliveryAttemptRequest(tenant_id=tenant_id, delivery=delivery),
            metadata=await self._metadata(),
            timeout=self._timeout,
        )
