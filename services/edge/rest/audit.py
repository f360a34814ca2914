"""REST route for the audit log: `GET /v1/audit` → TokenService.ListAuditEvents.

The caller's own tenant only: the request names no tenant, and the token service takes it from the
exchanged token. Only a tenant's admin users hold `audit:read`; anyone else gets 403.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from macp.token.v1 import token_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from services.edge.context import edge_context
from services.edge.http import message_response
from services.edge.rest.conventions import integer, invalid_parameter, query_time
from services.edge.routes import ApiRoute
from services.runtime.audit import ACTIONS


def _timestamp(request: Request, parameter: str) -> Timestamp | None:
    """The parameter as a Timestamp, None when it is absent (no bound); 400 naming it if malformed."""
    if not request.query_params.get(parameter):
        return None
    moment = Timestamp()
    try:
        moment.FromDatetime(query_time(request, parameter, datetime.now(UTC)))
    except (OverflowError, ValueError):
        # 0001-01-01T00:00:00+01:00 parses, but is before year 1 in UTC.
        raise invalid_parameter(parameter, "the time is outside 0001-01-01 to 9999-12-31 in UTC") from None
    return moment


async def list_audit_events(request: Request) -> Response:
    edge = edge_context(request)
    params = request.query_params
    page_size = integer(params, "page_size")
    if not 0 <= page_size <= 1000:
        raise invalid_parameter("page_size", f"a whole number from 1 to 1000, got {page_size}")
    action = params.get("action", "")
    if action and action not in ACTIONS:
        raise invalid_parameter("action", f"one of {', '.join(ACTIONS)}, got {action!r}")
    audit_request = pb.ListAuditEventsRequest(
        page_size=page_size,
        page_token=params.get("page_token", ""),
        action=action,
        subject=params.get("subject", ""),
    )
    for parameter in ("start_time", "end_time"):
        moment = _timestamp(request, parameter)
        if moment is not None:
            getattr(audit_request, parameter).CopyFrom(moment)
    reply: pb.ListAuditEventsResponse = await edge.token.ListAuditEvents(audit_request, timeout=edge.timeout)
    return message_response(reply)


ROUTES = [
    ApiRoute(
        method="GET",
        path="/v1/audit",
        operation_id="listAuditEvents",
        summary="The caller's tenant's audit log, newest first (tenant admins only)",
        handler=list_audit_events,
        response=pb.ListAuditEventsResponse,
        query=(
            (
                "page_size",
                {"type": "integer", "minimum": 0, "maximum": 1000},
                "events per page (0 or left out: 50)",
            ),
            ("page_token", {"type": "string"}, "next_page_token of the previous page"),
            ("start_time", {"type": "string", "format": "date-time"}, "only events at or after this time"),
            ("end_time", {"type": "string", "format": "date-time"}, "only events before this time"),
            ("action", {"type": "string", "enum": list(ACTIONS)}, "only events of this action"),
            ("subject", {"type": "string"}, "only events of this user, client or agent id"),
        ),
        errors=(400, 401, 403, 503),
        tags=("audit",),
    ),
]
