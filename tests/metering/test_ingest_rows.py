"""Recording a batch in real Postgres: the event time and billing month that Postgres derives from
a row's seconds and microseconds are those protobuf and periods.py give in Python, at the edges
(month and year boundaries, before 1970, the last microsecond of year 9999); duplicates inside a
batch and across batches are counted once, rollups included."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from macp.common.v1 import usage_pb2

import services.metering
from services.metering.events import row_of_event
from services.metering.meters import METER_OF_TYPE, quantity
from services.metering.store.ingest import SMALL_BATCH, record_batch
from services.runtime.db import apply_migrations
from services.runtime.periods import billing_month
from tests.metering.usage_events import agent_turn, other_event

MIGRATIONS = Path(services.metering.__file__).parent / "migrations"

# (seconds, nanos): around month and year ends in UTC, before the epoch, the range's far ends.
TIMES = [
    (1_798_761_599, 999_999_999),  # 2026-12-31T23:59:59.999999999Z
    (1_798_761_600, 0),  # 2027-01-01T00:00:00Z
    (1_772_323_199, 500_000_999),  # 2026-02-28T23:59:59.500000999Z
    (-1, 999_999),  # 1969-12-31T23:59:59.000999Z
    (-62_135_596_800, 0),  # 0001-01-01T00:00:00Z
    (253_402_300_799, 999_999_999),  # 9999-12-31T23:59:59.999999999Z
    (1_764_547_200, 123_456_789),
]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        await apply_migrations(pool, "metering", MIGRATIONS)
        yield pool


# A batch of a few events goes in as arrays, a bigger one through the staging table: both paths.
@pytest.mark.parametrize("filler", [0, SMALL_BATCH])
async def test_postgres_derives_the_time_and_month_python_would(pool: asyncpg.Pool, filler: int) -> None:
    events = [agent_turn("t-filler") for _ in range(filler)]
    for seconds, nanos in TIMES:
        event = agent_turn("t-times")
        event.time.seconds, event.time.nanos = seconds, nanos
        events.append(event)
    batch = await record_batch(pool, [row_of_event(e) for e in events])
    assert batch.recorded == len(TIMES) + filler
    stored = {
        str(row["event_id"]): (row["event_time"], row["billing_month"])
        for row in await pool.fetch("SELECT event_id, event_time, billing_month FROM metering_usage_events")
    }
    for event in events:
        moment = event.time.ToDatetime(tzinfo=UTC)
        assert stored[event.event_id] == (moment, billing_month(moment)), event.time


@pytest.mark.parametrize("filler", [0, SMALL_BATCH])
async def test_duplicates_in_and_across_batches_are_recorded_once(pool: asyncpg.Pool, filler: int) -> None:
    month = datetime(2026, 12, 1, tzinfo=UTC)
    extra = [row_of_event(agent_turn("t-filler", time=month)) for _ in range(filler)]
    events = [
        agent_turn("t-dup", conversation_id=str(uuid.UUID(int=1)), input_tokens=i, time=month)
        for i in range(10)
    ]
    rows = [row_of_event(e) for e in events]
    first = await record_batch(pool, rows[:6] + rows[:3] + extra)
    second = await record_batch(pool, rows[3:] + rows[:1] + extra)
    assert (first.recorded, first.duplicates) == (6 + filler, 3)
    assert (second.recorded, second.duplicates) == (4, 4 + filler)
    totals = await pool.fetchrow(
        "SELECT sum(event_count) AS n, sum(input_tokens) AS i FROM metering_usage_rollups"
        " WHERE tenant_id = 't-dup'"
    )
    assert (totals["n"], totals["i"]) == (10, sum(range(10)))
    deltas = [(d.tenant_id, d.quantity) for d in first.deltas + second.deltas if d.tenant_id == "t-dup"]
    assert deltas == [("t-dup", 6.0), ("t-dup", 4.0)]


@pytest.mark.parametrize("filler", [0, SMALL_BATCH])
async def test_each_meter_is_counted_as_meters_quantity_says(pool: asyncpg.Pool, filler: int) -> None:
    """The statement computes the quota deltas itself (its meter table is written from
    METER_OF_TYPE): counted meters one per event, measured ones their summed measure, one delta per
    tenant, month and meter, stored for the sweep exactly as returned."""
    month = datetime(2026, 12, 1, tzinfo=UTC)
    events = [agent_turn("t-filler", time=month) for _ in range(filler)]
    expected: dict[int, float] = {}
    for event_type in METER_OF_TYPE:
        for n in range(1, 4):
            event = other_event(
                "t-meters",
                usage_pb2.UsageEventType.ValueType(event_type),
                audio_seconds=1.5 * n,
                storage_mb=0.25 * n,
            )
            event.time.FromDatetime(month)
            events.append(event)
            dims = event.dimensions
            meter = METER_OF_TYPE[event_type]
            expected[meter] = expected.get(meter, 0.0) + quantity(
                event_type, 1, dims.audio_seconds, dims.storage_mb
            )
    batch = await record_batch(pool, [row_of_event(e) for e in events])
    assert batch.recorded == len(events)
    counted = {d.meter: d.quantity for d in batch.deltas if d.tenant_id == "t-meters"}
    assert counted == pytest.approx(expected)
    assert len(counted) == len([d for d in batch.deltas if d.tenant_id == "t-meters"])
    stored = await pool.fetch(
        "SELECT tenant_id, billing_month, meter, quantity FROM metering_quota_deltas WHERE batch_id = $1",
        batch.batch_id,
    )
    assert sorted((r["tenant_id"], r["billing_month"], r["meter"], r["quantity"]) for r in stored) == sorted(
        (d.tenant_id, d.billing_month, d.meter, d.quantity) for d in batch.deltas
    )
    again = await record_batch(pool, [row_of_event(e) for e in events])
    assert (again.recorded, again.deltas) == (0, [])
