"""REST routes for usage: `GET /v1/usage` and `GET /v1/usage/invoice-preview` → MeteringService.

Both report the caller's own tenant (from its verified token); the metering service checks that
again against the exchanged token's principal. `group_by=day` groups by UTC calendar day (the
billing calendar) and `agent_id` narrows to one agent, so a month's chart per day, per agent and
one agent's days are three calls; every group carries its list price (`totals.costCents`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from macp.metering.v1 import metering_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from services.edge.context import edge_context
from services.edge.http import message_response
from services.edge.rest.conventions import integer, invalid_parameter, or_empty, query_time
from services.edge.routes import ApiRoute
from services.runtime.periods import billing_month, month_end, month_start
from services.runtime.principal import current_principal

GROUPS = {
    "agent": pb.GROUP_BY_AGENT,
    "conversation": pb.GROUP_BY_CONVERSATION,
    "model": pb.GROUP_BY_MODEL,
    "event_type": pb.GROUP_BY_EVENT_TYPE,
    "day": pb.GROUP_BY_DAY,
}


def _tenant() -> str:
    return current_principal().tenant_id


async def get_usage(request: Request) -> Response:
    edge = edge_context(request)
    params = request.query_params
    group = params.get("group_by", "event_type")
    if group not in GROUPS:
        raise invalid_parameter("group_by", f"one of {', '.join(GROUPS)}, got {group!r}")
    # The default period is this billing month, by the metering service's own calendar.
    month = billing_month(datetime.now(UTC))
    usage_request = pb.GetUsageRequest(
        tenant_id=_tenant(),
        group_by=GROUPS[group],
        user_id=params.get("user_id", ""),
        agent_id=params.get("agent_id", ""),
        page_size=integer(params, "page_size"),
        page_token=params.get("page_token", ""),
    )
    usage_request.period.start_time.FromDatetime(query_time(request, "start", month_start(month)))
    usage_request.period.end_time.FromDatetime(query_time(request, "end", month_end(month)))
    reply: pb.GetUsageResponse = await edge.metering.GetUsage(usage_request, timeout=edge.timeout)
    return message_response(reply)


async def get_invoice_preview(request: Request) -> Response:
    edge = edge_context(request)
    reply: pb.GetInvoicePreviewResponse = await edge.metering.GetInvoicePreview(
        pb.GetInvoicePreviewRequest(tenant_id=_tenant(), billing_month=request.query_params.get("month", "")),
        timeout=edge.timeout,
    )
    return message_response(reply)


ROUTES = [
    ApiRoute(
        method="GET",
        path="/v1/usage",
        operation_id="getUsage",
        summary="The caller's tenant's usage over a period, grouped",
        handler=get_usage,
        response=pb.GetUsageResponse,
        query=(
            (
                "start",
                or_empty({"type": "string", "format": "date-time"}),
                "period start, inclusive (default: this month's)",
            ),
            (
                "end",
                or_empty({"type": "string", "format": "date-time"}),
                "period end, exclusive (default: next month's start)",
            ),
            (
                "group_by",
                {"type": "string", "enum": list(GROUPS)},
                "how to group (default event_type); day: by UTC calendar day, YYYY-MM-DD, oldest first",
            ),
            ("user_id", {"type": "string"}, "only this user's usage"),
            (
                "agent_id",
                or_empty({"type": "string", "format": "uuid"}),
                "only this agent's usage (with group_by=day: its days); empty or left out: every agent's",
            ),
            (
                "page_size",
                {"type": "integer", "minimum": 0, "maximum": 1000},
                "groups per page (0 or left out: 50)",
            ),
            ("page_token", {"type": "string"}, "next_page_token of the previous page"),
        ),
        errors=(400, 401, 403, 503),
        tags=("usage",),
    ),
    ApiRoute(
        method="GET",
        path="/v1/usage/invoice-preview",
        operation_id="getInvoicePreview",
        summary="The caller's tenant's charges for a billing month so far, in integer cents",
        handler=get_invoice_preview,
        response=pb.GetInvoicePreviewResponse,
        query=(
            (
                "month",
                or_empty({"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$"}),
                "YYYY-MM, UTC (default: this month)",
            ),
        ),
        errors=(400, 401, 403, 503),
        tags=("usage",),
    ),
]
