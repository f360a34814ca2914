"""gRPC surface of the webhook subscriptions: proto in, domain call, proto out."""

from __future__ import annotations

from datetime import UTC

from macp.conversation.v1 import webhook_service_pb2 as pb
from macp.conversation.v1 import webhook_service_pb2_grpc as pb_grpc

from services.conversation.webhooks import Webhooks
from services.runtime.context import RpcContext
from services.runtime.principal import current_principal


class WebhookServicer(pb_grpc.WebhookServiceServicer):
    def __init__(self, webhooks: Webhooks) -> None:
        self._webhooks = webhooks

    async def CreateWebhookSubscription(
        self, request: pb.CreateWebhookSubscriptionRequest, context: RpcContext
    ) -> pb.CreateWebhookSubscriptionResponse:
        created = await self._webhooks.create(current_principal(), request.webhook_subscription)
        return pb.CreateWebhookSubscriptionResponse(webhook_subscription=created)

    async def GetWebhookSubscription(
        self, request: pb.GetWebhookSubscriptionRequest, context: RpcContext
    ) -> pb.GetWebhookSubscriptionResponse:
        found = await self._webhooks.get(current_principal(), request.id)
        return pb.GetWebhookSubscriptionResponse(webhook_subscription=found)

    async def ListWebhookSubscriptions(
        self, request: pb.ListWebhookSubscriptionsRequest, context: RpcContext
    ) -> pb.ListWebhookSubscriptionsResponse:
        return await self._webhooks.list(current_principal(), request)

    async def DeleteWebhookSubscription(
        self, request: pb.DeleteWebhookSubscriptionRequest, context: RpcContext
    ) -> pb.DeleteWebhookSubscriptionResponse:
        await self._webhooks.delete(current_principal(), request.id, request.etag)
        return pb.DeleteWebhookSubscriptionResponse()

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: RpcContext
    ) -> pb.ListWebhookDeliveriesResponse:
        deliveries = await self._webhooks.deliveries(current_principal(), request)
        return pb.ListWebhookDeliveriesResponse(deliveries=deliveries)

    async def ListDeliveryTargets(
        self, request: pb.ListDeliveryTargetsRequest, context: RpcContext
    ) -> pb.ListDeliveryTargetsResponse:
        since = request.active_since.ToDatetime(tzinfo=UTC)
        found = await self._webhooks.targets(current_principal(), since)
        return pb.ListDeliveryTargetsResponse(
            targets=[
                pb.DeliveryTarget(
                    subscription=target.subscription,
                    sealed_secret=target.sealed_secret,
                    conversation_ids=target.conversation_ids,
                )
                for target in found
            ]
        )

    async def RecordDeliveryAttempt(
        self, request: pb.RecordDeliveryAttemptRequest, context: RpcContext
    ) -> pb.RecordDeliveryAttemptResponse:
        await self._webhooks.record(current_principal(), request.tenant_id, request.delivery)
        return pb.RecordDeliveryAttemptResponse()
