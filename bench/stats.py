"""Summaries and Markdown tables shared by the benchmarks.

Absolute times drift on the shared 2-core machines; the tables therefore always carry the raw
baseline measured in the same run, and ratios to it.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Spread:
    """Median, min and max of a handful of repeated measurements (seconds)."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no measurements to summarise")
        return cls(statistics.median(values), min(values), max(values))


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (p99 of 2,000 samples is the 1,980th)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def ratio(value: float, baseline: float) -> str:
    """value / baseline to two significant digits: 28x, 5.6x, 0.036x."""
    if baseline <= 0 or math.isnan(value) or math.isnan(baseline):
        return "-"
    return f"{value / baseline:.2g}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> str:
    """A GitHub Markdown table; columns from `right_from` on are numbers and align right."""
    align = ["---" if index < right_from else "---:" for index in range(len(headers))]
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def machine_line() -> str:
    """Where and when a table was measured, printed under it."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"Measured {when} on {os.cpu_count()} CPUs ({platform.machine()}, {platform.system()}), "
        f"Python {platform.python_version()}; load average before the run: {load}."
    )


def added_latency_row(
    concurrency: int, count: int, base: Sequence[float], through: Sequence[float]
) -> list[str]:
    """One row of a latency table: concurrency, count, the p50 and p99 (ms) of a baseline and of the
    same work through MACP (sorted seconds), then what MACP adds at each, the p50 in bold."""
    p50 = (percentile(base, 0.5), percentile(through, 0.5))
    p99 = (percentile(base, 0.99), percentile(through, 0.99))
    return [
        str(concurrency),
        str(count),
        f"{p50[0] * 1000:.2f}",
        f"{p99[0] * 1000:.2f}",
        f"{p50[1] * 1000:.2f}",
        f"{p99[1] * 1000:.2f}",
        f"**{(p50[1] - p50[0]) * 1000:.2f}**",
        f"{(p99[1] - p99[0]) * 1000:.2f}",
    ]
