"""Usage reports: GetUsage's totals per group over a period, one page at a time."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, date, datetime

from macp.common.v1 import usage_pb2
from macp.metering.v1 import metering_service_pb2 as pb

from services.metering.store.usage import Totals, UsageStore
from services.runtime.errors import InvalidArgument
from services.runtime.periods import billing_month, month_start

DEFAULT_PAGE_SIZE = 50


def _page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _offset(token: str) -> int:
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidArgument("page_token: not a token this service issued") from None
    if not isinstance(offset, int) or offset < 0:
        raise InvalidArgument("page_token: not a token this service issued")
    return offset


def _whole_months(start: datetime, end: datetime) -> tuple[date, date] | None:
    """The billing months [start, end) covers exactly, or None if it cuts one."""
    if month_start(billing_month(start)) == start and month_start(billing_month(end)) == end:
        return billing_month(start), billing_month(end)
    return None


def _message(totals: Totals) -> pb.UsageTotals:
    return pb.UsageTotals(
        agent_turns=totals.agent_turns,
        orchestrations=totals.orchestrations,
        voice_seconds=totals.voice_seconds,
        storage_mb=totals.storage_mb,
        api_calls=totals.api_calls,
        tool_calls=totals.tool_calls,
        input_tokens=totals.input_tokens,
        output_tokens=totals.output_tokens,
        event_count=totals.event_count,
        estimated_event_count=totals.estimated_event_count,
    )


def _key(group_by: int, key: str) -> str:
    if group_by == pb.GROUP_BY_EVENT_TYPE:
        return usage_pb2.UsageEventType.Name(int(key))  # type: ignore[arg-type]
    return key


class UsageReports:
    def __init__(self, store: UsageStore) -> None:
        self._store = store

    async def usage(self, tenant_id: str, request: pb.GetUsageRequest) -> pb.GetUsageResponse:
        start = request.period.start_time.ToDatetime(tzinfo=UTC)
        end = request.period.end_time.ToDatetime(tzinfo=UTC)
        size = request.page_size or DEFAULT_PAGE_SIZE
        offset = _offset(request.page_token)
        # Whole months come from the rollups; any other period from the raw events.
        months = _whole_months(start, end)
        low, high = months if months is not None else (start, end)
        groups, overall = await self._store.usage(
            tenant_id, low, high, request.group_by, request.user_id, size + 1, offset
        )
        response = pb.GetUsageResponse(
            groups=[
                pb.UsageGroup(key=_key(request.group_by, g.key), totals=_message(g)) for g in groups[:size]
            ],
            totals=_message(overall),
        )
        if len(groups) > size:
            response.next_page_token = _page_token(offset + size)
        return response
