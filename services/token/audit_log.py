"""ListAuditEvents: one tenant's audit log, newest first, for that tenant's admins.

The token service owns reading the trail (security owns it), though every service writes to it
(services/runtime/audit.py). The tenant is the bearer's, never a request field, so an admin of one
tenant has no way to name another's rows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import asyncpg
from macp.token.v1 import token_service_pb2 as pb

from services.runtime import audit
from services.runtime.errors import InvalidArgument
from services.runtime.paging import decode_page_token, filter_digest, page_size, time_key, time_token
from services.runtime.protos import timestamp


def _event(row: asyncpg.Record) -> pb.AuditEvent:
    return pb.AuditEvent(
        id=str(row["id"]),
        time=timestamp(row["event_time"]),
        request_id=row["request_id"],
        correlation_id=row["correlation_id"],
        tenant_id=row["tenant_id"],
        subject=row["subject"],
        actor_chain=[audit.actor_of_json(item) for item in json.loads(row["actor_chain"])],
        client_id=row["client_id"],
        action=row["action"],
        resource=row["resource"],
        outcome=row["outcome"],
        detail=json.loads(row["detail"]),
    )


def _bound(request: pb.ListAuditEventsRequest, field: str) -> datetime | None:
    """A time bound of the request, None when unset; INVALID_ARGUMENT naming it when no datetime
    can hold it (a Timestamp's seconds reach far past year 9999)."""
    if not request.HasField(field):  # type: ignore[arg-type]
        return None
    try:
        moment: datetime = getattr(request, field).ToDatetime(tzinfo=UTC)
    except (OverflowError, ValueError):
        raise InvalidArgument(f"{field}: outside 0001-01-01 to 9999-12-31") from None
    return moment


class AuditLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def list(self, tenant_id: str, request: pb.ListAuditEventsRequest) -> pb.ListAuditEventsResponse:
        if request.action and request.action not in audit.ACTIONS:
            raise InvalidArgument(f"action: one of {', '.join(audit.ACTIONS)}, got {request.action!r}")
        start = _bound(request, "start_time")
        end = _bound(request, "end_time")
        if start is not None and end is not None and end <= start:
            raise InvalidArgument("end_time: must be after start_time")
        digest = filter_digest("audit", tenant_id, start, end, request.action, request.subject)
        before = time_key(decode_page_token(request.page_token, digest))
        size = page_size(request.page_size)
        rows = await audit.read(
            self._pool,
            audit.AuditQuery(
                tenant_id=tenant_id,
                limit=size + 1,
                before=before,
                start_time=start,
                end_time=end,
                action=request.action,
                subject=request.subject,
            ),
        )
        response = pb.ListAuditEventsResponse(events=[_event(row) for row in rows[:size]])
        if len(rows) > size:
            last = response.events[size - 1]
            response.next_page_token = time_token(last.time, last.id, digest)
        return response
