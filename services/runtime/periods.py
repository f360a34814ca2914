"""Billing periods: calendar months in UTC, half-open [start, end).

Shared by metering (quotas, usage, invoices) and the edge (the default period of `GET /v1/usage`),
so that both count the same month."""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime

from services.runtime.errors import InvalidArgument


def billing_month(moment: datetime) -> date:
    """The first day of `moment`'s calendar month in UTC."""
    utc = moment.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def month_start(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def month_end(month: date) -> datetime:
    """The start of the following month: billing months are half-open [start, end)."""
    if month.month == 12:
        return datetime(month.year + 1, 1, 1, tzinfo=UTC)
    return datetime(month.year, month.month + 1, 1, tzinfo=UTC)


def parse_month(text: str, field: str, now: datetime) -> date:
    """A "YYYY-MM" month (the proto validates the shape); empty means the month of `now`."""
    if not text:
        return billing_month(now)
    try:
        year, month = (int(part) for part in text.split("-"))
        return date(year, month, 1)
    except ValueError:
        raise InvalidArgument(f"{field}: expected YYYY-MM, got {text!r}") from None


@functools.lru_cache(maxsize=64)
def month_label(month: date) -> str:
    return f"{month.year:04d}-{month.month:02d}"
