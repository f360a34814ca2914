"""Usage reports: GetUsage's totals per group over a period, one page at a time, each with its
list price at the tenant's current plan (invoices.list_price_cents: the invoice's own pricing, so
a day's cost is what the invoice would charge for that day's units if none were included)."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, date, datetime

from macp.common.v1 import usage_pb2
from macp.metering.v1 import metering_service_pb2 as pb

from services.metering.invoices import list_price_cents
from services.metering.plans import Plans, allowances_of
from services.metering.store.usage import GROUP_BY_DAY, Totals, UsageStore
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


def used_by_meter(totals: Totals) -> dict[int, float]:
    """Each meter's quantity in `totals`: the store sums every event type into its meter's measure
    as meters.py maps them (turns, orchestrations, calls counted; voice seconds, MB summed)."""
    return {
        pb.METER_AGENT_TURNS: totals.agent_turns,
        pb.METER_ORCHESTRATIONS: totals.orchestrations,
        pb.METER_VOICE_SECONDS: totals.voice_seconds,
        pb.METER_STORAGE_MB: totals.storage_mb,
        pb.METER_API_CALLS: totals.api_calls,
        pb.METER_TOOL_CALLS: totals.tool_calls,
    }


def _message(totals: Totals, allowances: dict[int, pb.PlanAllowance]) -> pb.UsageTotals:
    return pb.UsageTotals(
        agent_turns=totals.agent_turns,
        orchestrations=totals.orchestrations,
        voice_seconds=totals.voice_seconds,
        voice_minutes=totals.voice_seconds / 60,
        storage_mb=totals.storage_mb,
        api_calls=totals.api_calls,
        tool_calls=totals.tool_calls,
        input_tokens=totals.input_tokens,
        output_tokens=totals.output_tokens,
        event_count=totals.event_count,
        estimated_event_count=totals.estimated_event_count,
        cost_cents=list_price_cents(used_by_meter(totals), allowances),
    )


def _key(group_by: int, key: str) -> str:
    if group_by == pb.GROUP_BY_EVENT_TYPE:
        return usage_pb2.UsageEventType.Name(int(key))  # type: ignore[arg-type]
    return key


class UsageReports:
    def __init__(self, store: UsageStore, plans: Plans) -> None:
        self._store = store
        self._plans = plans

    async def usage(self, tenant_id: str, request: pb.GetUsageRequest) -> pb.GetUsageResponse:
        start = request.period.start_time.ToDatetime(tzinfo=UTC)
        end = request.period.end_time.ToDatetime(tzinfo=UTC)
        size = request.page_size or DEFAULT_PAGE_SIZE
        offset = _offset(request.page_token)
        # Whole months come from the rollups (unless grouped by day, which they do not keep); any
        # other period from the raw events.
        months = None if request.group_by == GROUP_BY_DAY else _whole_months(start, end)
        low, high = months if months is not None else (start, end)
        groups, overall = await self._store.usage(
            tenant_id, low, high, request.group_by, request.user_id, request.agent_id, size + 1, offset
        )
        allowances = allowances_of(await self._plans.get(tenant_id))
        response = pb.GetUsageResponse(
            groups=[
                pb.UsageGroup(key=_key(request.group_by, g.key), totals=_message(g, allowances))
                for g in groups[:size]
            ],
            totals=_message(overall, allowances),
        )
        if len(groups) > size:
            response.next_page_token = _page_token(offset + size)
        return response
