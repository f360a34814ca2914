"""Usage queries: totals per group over a period, from the rollups when the period is whole
billing months, else from the raw events (by their time). Grouping by day always reads the raw
events: the rollups keep months, not days."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

# GroupBy value -> the column it groups by (the event type is grouped by its number here; the day
# is the event time's UTC calendar day, as billing months are UTC calendar months).
GROUP_COLUMNS = {
    1: "agent_id",
    2: "conversation_id",
    3: "model",
    4: "event_type",
    5: "to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
GROUP_BY_DAY = 5
# Days come in the calendar's order; every other grouping largest first.
_ORDER = {GROUP_BY_DAY: "key"}
_LARGEST_FIRST = "event_count DESC, key"


@dataclass(frozen=True)
class Totals:
    key: str
    agent_turns: int
    orchestrations: int
    voice_seconds: float
    storage_mb: float
    api_calls: int
    tool_calls: int
    input_tokens: int
    output_tokens: int
    event_count: int
    estimated_event_count: int


def _aggregates(count: str, estimated: str) -> str:
    """The totals' SQL over rows where `count` is each row's number of events."""
    return f"""
        coalesce(sum({count}) FILTER (WHERE event_type = 1), 0)::bigint AS agent_turns,
        coalesce(sum({count}) FILTER (WHERE event_type = 2), 0)::bigint AS orchestrations,
        coalesce(sum(audio_seconds) FILTER (WHERE event_type IN (3, 4)), 0) AS voice_seconds,
        coalesce(sum(storage_mb) FILTER (WHERE event_type = 5), 0) AS storage_mb,
        coalesce(sum({count}) FILTER (WHERE event_type = 6), 0)::bigint AS api_calls,
        coalesce(sum({count}) FILTER (WHERE event_type = 7), 0)::bigint AS tool_calls,
        coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
        coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
        coalesce(sum({count}), 0)::bigint AS event_count,
        coalesce(sum({estimated}), 0)::bigint AS estimated_event_count
    """


_ROLLUPS = (
    "metering_usage_rollups",
    "billing_month >= $2::date AND billing_month < $3::date",
    "event_count",
    "estimated_count",
)
_EVENTS = (
    "metering_usage_events",
    "event_time >= $2 AND event_time < $3",
    "1",
    "CASE WHEN estimated THEN 1 ELSE 0 END",
)


def _totals(row: asyncpg.Record, key: str) -> Totals:
    return Totals(
        key=key,
        agent_turns=row["agent_turns"],
        orchestrations=row["orchestrations"],
        voice_seconds=float(row["voice_seconds"]),
        storage_mb=float(row["storage_mb"]),
        api_calls=row["api_calls"],
        tool_calls=row["tool_calls"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        event_count=row["event_count"],
        estimated_event_count=row["estimated_event_count"],
    )


class UsageStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def usage(
        self,
        tenant_id: str,
        start: datetime | date,
        end: datetime | date,
        group_by: int,
        user_id: str,
        agent_id: str,
        limit: int,
        offset: int,
    ) -> tuple[list[Totals], Totals]:
        """One page of groups (days oldest first, any other group largest event count first) and
        the totals over all of them. `start`/`end` as dates select whole billing months from the
        rollups; an empty `user_id` or `agent_id` does not filter."""
        table, period, count, estimated = (
            _ROLLUPS if isinstance(start, date) and not isinstance(start, datetime) else _EVENTS
        )
        column = GROUP_COLUMNS[group_by]
        # $1 tenant, $2/$3 the period, $4 the user ('' for all), $5 the agent ('' for all),
        # $6 limit, $7 offset.
        where = f"tenant_id = $1 AND {period} AND ($4 = '' OR user_id = $4) AND ($5 = '' OR agent_id = $5)"
        aggregates = _aggregates(count, estimated)
        order = _ORDER.get(group_by, _LARGEST_FIRST)
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(
                f"""
                SELECT {column}::text AS key, {aggregates} FROM {table} WHERE {where}
                GROUP BY {column} ORDER BY {order} LIMIT $6 OFFSET $7
                """,
                tenant_id,
                start,
                end,
                user_id,
                agent_id,
                limit,
                offset,
            )
            overall = await conn.fetchrow(
                f"SELECT {aggregates} FROM {table} WHERE {where}", tenant_id, start, end, user_id, agent_id
            )
        return [_totals(row, row["key"]) for row in rows], _totals(overall, "")

    async def month_usage(self, tenant_id: str, month: date) -> dict[int, tuple[int, float, float]]:
        """Event type -> (event count, audio seconds, storage MB) in one billing month."""
        rows = await self._pool.fetch(
            """
            SELECT event_type, sum(event_count)::bigint AS n, sum(audio_seconds) AS audio,
                   sum(storage_mb) AS storage
            FROM metering_usage_rollups WHERE tenant_id = $1 AND billing_month = $2 GROUP BY event_type
            """,
            tenant_id,
            month,
        )
        return {row["event_type"]: (row["n"], float(row["audio"]), float(row["storage"])) for row in rows}
