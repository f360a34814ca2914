"""Invoice previews: a billing month's usage priced against the tenant's plan, in integer cents.

Rounding, so every figure is reproducible: a meter's monthly quantity is rounded up to a whole
unit (seconds of voice, MB of storage; counted meters are whole already); the overage is that
quantity past the included allowance (0 under a hard limit, where use past it was refused); each
line's amount is ceil(overage x price_cents / block_size), computed in integers, so a line is
never billed a fraction of a cent and the total is the sum of the lines. Storage is priced on the
megabytes stored during the month, per 1,024 MB block (the "GB-month").

GetUsage's `cost_cents` is priced here too, by `list_price_cents`: each meter's line as this
module would write it if the plan included none of the usage, summed. One pricing, so a group's
cost and an invoice line never disagree on a price, a block or a rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime

from macp.metering.v1 import metering_service_pb2 as pb

from services.metering.meters import METER_LABELS, METER_OF_TYPE, quantity
from services.metering.plans import Plans, allowances_of
from services.metering.store.usage import UsageStore
from services.runtime.periods import month_end, month_start, parse_month
from services.runtime.protos import timestamp


def amount_cents(overage: int, price_cents: int, block_size: int) -> int:
    """ceil(overage * price / block) in integer arithmetic."""
    return -(-overage * price_cents // block_size)


def line_item(meter: int, used: int, allowance: pb.PlanAllowance | None) -> pb.InvoiceLineItem:
    description, unit = METER_LABELS[meter]
    line = pb.InvoiceLineItem(meter=meter, description=description, unit=unit, quantity=used)  # type: ignore[arg-type]
    if allowance is None:
        line.included_quantity = used  # not limited and not priced by the plan
        return line
    line.has_allowance = True
    line.allowance_quantity = allowance.included_quantity
    line.hard_limit = allowance.hard_limit
    line.included_quantity = min(used, allowance.included_quantity)
    line.overage_quantity = 0 if allowance.hard_limit else used - line.included_quantity
    line.overage_price_cents = allowance.overage_price_cents
    line.overage_block_size = allowance.overage_block_size
    line.amount_cents = amount_cents(
        line.overage_quantity, allowance.overage_price_cents, allowance.overage_block_size
    )
    return line


def list_price_cents(used: Mapping[int, float], allowances: Mapping[int, pb.PlanAllowance]) -> int:
    """What `used` (meter -> quantity) costs at the plan's prices before its included allowance:
    the sum of the lines `line_item` writes for each meter's quantity, rounded up to a whole unit,
    with nothing included. A meter under a hard limit or not in the plan prices at 0, as on an
    invoice."""
    total = 0
    for meter, quantity_used in used.items():
        allowance = allowances.get(meter)
        unincluded = None
        if allowance is not None:
            unincluded = pb.PlanAllowance()
            unincluded.CopyFrom(allowance)
            unincluded.included_quantity = 0
        total += line_item(meter, math.ceil(quantity_used), unincluded).amount_cents
    return total


class Invoices:
    def __init__(self, store: UsageStore, plans: Plans, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._plans = plans
        self._clock = clock

    async def preview(self, tenant_id: str, billing_month_text: str) -> pb.GetInvoicePreviewResponse:
        now = self._clock()
        month = parse_month(billing_month_text, "billing_month", now)
        plan = await self._plans.get(tenant_id)
        used: dict[int, float] = {}
        for event_type, (count, audio, storage) in (await self._store.month_usage(tenant_id, month)).items():
            meter = METER_OF_TYPE[event_type]
            used[meter] = used.get(meter, 0.0) + quantity(event_type, count, audio, storage)
        allowances = allowances_of(plan)
        lines = [
            line_item(meter, math.ceil(used.get(meter, 0.0)), allowances.get(meter))
            for meter in sorted(set(used) | set(allowances))
        ]
        response = pb.GetInvoicePreviewResponse(
            tenant_id=tenant_id,
            tier=plan.tier,
            line_items=lines,
            total_cents=sum(line.amount_cents for line in lines),
            currency="USD",
            final=now >= month_end(month),
        )
        response.period.start_time.CopyFrom(timestamp(month_start(month)))
        response.period.end_time.CopyFrom(timestamp(month_end(month)))
        response.generate_time.CopyFrom(timestamp(now))
        return response
