"""REST routes of conversation webhooks: `/v1/webhooks` (a tenant's subscriptions) and
`/v1/webhooks/{id}/deliveries` (the ones that failed: retried, delivered late, dead-lettered) →
WebhookService (docs/webhooks.md).

A subscription's body is the `WebhookSubscription` message as JSON: `url` (required),
`conversationId` (empty for every conversation of the tenant) and `eventKinds`. Its signing secret
is in the create answer only (`secret`)."""

from __future__ import annotations

from macp.conversation.v1 import webhook_service_pb2 as pb
from macp.conversation.v1 import webhook_service_pb2_grpc as pb_grpc
from starlette.requests import Request
from starlette.responses import Response

from services.edge.context import EdgeContext, edge_context
from services.edge.http import message_response
from services.edge.rest.conventions import (
    COMMON_ERRORS,
    ITS_ID,
    PAGE_QUERY,
    WRITE_ERRORS,
    integer,
    invalid,
    or_empty,
    page,
    query,
)
from services.edge.rest.resources import StoredResource
from services.edge.routes import ApiRoute, Link


def webhook_service(edge: EdgeContext) -> pb_grpc.WebhookServiceStub:
    # A stub is a thin view of the edge's mesh channel, whose caller tokens it uses like every stub.
    return pb_grpc.WebhookServiceStub(edge.channel)


WEBHOOKS = StoredResource(
    "webhooks",
    pb.WebhookSubscription,
    pb,
    "WebhookService",
    webhook_service,
    verbs=("Create", "Get", "Delete"),
    required=("url",),
)

# The filter's values: every status but UNSPECIFIED (leaving `status` out means all).
STATUSES = [value.name for value in pb.WebhookDeliveryStatus.DESCRIPTOR.values if value.number != 0]


def _status(text: str) -> int:
    if not text:
        return 0
    if text not in STATUSES:
        raise invalid(f"status: one of {', '.join(STATUSES)}")
    return pb.WebhookDeliveryStatus.Value(text)


async def list_webhooks(request: Request) -> Response:
    edge = edge_context(request)
    params = query(request, ("page_size", "page_token"))
    reply: pb.ListWebhookSubscriptionsResponse = await webhook_service(edge).ListWebhookSubscriptions(
        pb.ListWebhookSubscriptionsRequest(**page(params)), timeout=edge.timeout
    )
    return message_response(reply)


async def list_deliveries(request: Request) -> Response:
    edge = edge_context(request)
    params = query(request, ("page_size", "status"))
    reply: pb.ListWebhookDeliveriesResponse = await webhook_service(edge).ListWebhookDeliveries(
        pb.ListWebhookDeliveriesRequest(
            subscription_id=request.path_params["id"],
            status=_status(params.get("status", "")),  # type: ignore[arg-type]
            page_size=integer(params, "page_size"),
        ),
        timeout=edge.timeout,
    )
    return message_response(reply)


WEBHOOK_LINKS = (
    Link("GetWebhook", "getWebhook", (ITS_ID,)),
    Link("DeleteWebhook", "deleteWebhook", (ITS_ID,)),
    Link("ListWebhookDeliveries", "listWebhookDeliveries", (ITS_ID,)),
)
STATUS_QUERY = ("status", or_empty({"type": "string", "enum": STATUSES}), "only deliveries in this state")
PAGE_SIZE_QUERY = PAGE_QUERY[0]
TAGS = ("webhooks",)

ROUTES = [
    ApiRoute(
        method="POST",
        path="/v1/webhooks",
        operation_id="createWebhook",
        summary="Subscribe an https endpoint to a conversation's events (or to every conversation "
        "of the tenant); the answer carries the signing secret, this once",
        handler=WEBHOOKS.create,
        body=pb.WebhookSubscription,
        required=WEBHOOKS.required,
        response=pb.WebhookSubscription,
        status=201,
        # 409: webhooks are off in this deployment (no MACP_WEBHOOKS_SEALING_KEY).
        errors=(*WRITE_ERRORS, 404, 409),
        tags=TAGS,
        links=WEBHOOK_LINKS,
    ),
    ApiRoute(
        method="GET",
        path="/v1/webhooks",
        operation_id="listWebhooks",
        summary="List the tenant's webhook subscriptions, oldest first, with their delivery state",
        handler=list_webhooks,
        response=pb.ListWebhookSubscriptionsResponse,
        query=PAGE_QUERY,
        errors=COMMON_ERRORS,
        tags=TAGS,
    ),
    ApiRoute(
        method="GET",
        path="/v1/webhooks/{id}",
        operation_id="getWebhook",
        summary="Get one webhook subscription with its delivery state (never its secret)",
        handler=WEBHOOKS.get,
        response=pb.WebhookSubscription,
        errors=(*COMMON_ERRORS, 404),
        tags=TAGS,
        links=WEBHOOK_LINKS,
    ),
    ApiRoute(
        method="DELETE",
        path="/v1/webhooks/{id}",
        operation_id="deleteWebhook",
        summary="Remove a webhook subscription (If-Match: optional etag)",
        handler=WEBHOOKS.delete,
        response=None,
        status=204,
        errors=(*COMMON_ERRORS, 404, 412),
        tags=TAGS,
    ),
    ApiRoute(
        method="GET",
        path="/v1/webhooks/{id}/deliveries",
        operation_id="listWebhookDeliveries",
        summary="The subscription's deliveries that failed at least once, newest first: dead "
        "letters, those being retried and those delivered late",
        handler=list_deliveries,
        response=pb.ListWebhookDeliveriesResponse,
        query=(PAGE_SIZE_QUERY, STATUS_QUERY),
        errors=(*COMMON_ERRORS, 404),
        tags=TAGS,
    ),
]
