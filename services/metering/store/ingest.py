"""Recording a batch of usage events in one transaction: distinct events, their rollups, the quota
deltas they cause and the batch's dead letters, all or nothing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import asyncpg

from services.metering.events import STAGED_COLUMNS, StagedRow
from services.metering.meters import METER_OF_TYPE, quantity
from services.metering.store import dead_letters as dead_letter_store
from services.metering.store.dead_letters import DeadLetter

# The staging table lives per connection and empties itself at every commit. It holds the rows
# as Python builds them cheaply (the id as text, the time as seconds and microseconds); Postgres
# derives the timestamp and the billing month while it copies them over.
_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS metering_staged_rows (
    event_id        uuid             NOT NULL,
    tenant_id       text             NOT NULL,
    user_id         text             NOT NULL,
    agent_id        text             NOT NULL,
    conversation_id text             NOT NULL,
    turn_id         text             NOT NULL,
    event_type      smallint         NOT NULL,
    event_seconds   bigint           NOT NULL,
    event_micros    integer          NOT NULL,
    input_tokens    bigint           NOT NULL,
    output_tokens   bigint           NOT NULL,
    duration_ms     bigint           NOT NULL,
    audio_seconds   double precision NOT NULL,
    storage_mb      double precision NOT NULL,
    provider        text             NOT NULL,
    model           text             NOT NULL,
    estimated       boolean          NOT NULL,
    payload         bytea            NOT NULL
) ON COMMIT DELETE ROWS
"""

# Insert what is new (a duplicate event_id, already stored or repeated in the batch, is skipped),
# then add exactly the inserted rows to the rollups. Events go in id order and groups in key order,
# so that two processes recording overlapping batches (around a rebalance) lock rows in the same
# order instead of deadlocking. The billing month is the UTC calendar month (periods.py).
_RECORD_FROM = """
WITH staged AS (
    SELECT s.*, to_timestamp(s.event_seconds) + s.event_micros * interval '1 microsecond' AS event_time
    FROM {source}
), inserted AS (
    INSERT INTO metering_usage_events
        (event_id, tenant_id, user_id, agent_id, conversation_id, turn_id, event_type, event_time,
         billing_month, input_tokens, output_tokens, duration_ms, audio_seconds, storage_mb, provider,
         model, estimated, payload)
    SELECT event_id, tenant_id, user_id, agent_id, conversation_id, turn_id, event_type, event_time,
           date_trunc('month', event_time AT TIME ZONE 'UTC')::date, input_tokens, output_tokens,
           duration_ms, audio_seconds, storage_mb, provider, model, estimated, payload
    FROM staged
    ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING tenant_id, billing_month, user_id, agent_id, conversation_id, model, event_type, estimated,
              input_tokens, output_tokens, duration_ms, audio_seconds, storage_mb
), grouped AS (
    SELECT tenant_id, billing_month, user_id, agent_id, conversation_id, model, event_type,
           count(*) AS event_count,
           count(*) FILTER (WHERE estimated) AS estimated_count,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
           sum(duration_ms) AS duration_ms, sum(audio_seconds) AS audio_seconds,
           sum(storage_mb) AS storage_mb
    FROM inserted
    GROUP BY tenant_id, billing_month, user_id, agent_id, conversation_id, model, event_type
), rolled AS (
    INSERT INTO metering_usage_rollups AS r
    SELECT * FROM grouped
    ORDER BY tenant_id, billing_month, user_id, agent_id, conversation_id, model, event_type
    ON CONFLICT (tenant_id, billing_month, user_id, agent_id, conversation_id, model, event_type)
    DO UPDATE SET
        event_count = r.event_count + excluded.event_count,
        estimated_count = r.estimated_count + excluded.estimated_count,
        input_tokens = r.input_tokens + excluded.input_tokens,
        output_tokens = r.output_tokens + excluded.output_tokens,
        duration_ms = r.duration_ms + excluded.duration_ms,
        audio_seconds = r.audio_seconds + excluded.audio_seconds,
        storage_mb = r.storage_mb + excluded.storage_mb
    RETURNING 1
)
-- `rolled` runs whether or not it is read (Postgres runs every data-modifying WITH once, fully).
SELECT g.tenant_id, g.billing_month, g.event_type, sum(g.event_count)::bigint AS event_count,
       sum(g.audio_seconds) AS audio_seconds, sum(g.storage_mb) AS storage_mb
FROM grouped g
GROUP BY g.tenant_id, g.billing_month, g.event_type
"""

# A big batch (the consumer's) is COPYed into the staging table first; a few events (a Commit's)
# go in the statement itself as arrays, which saves the staging table's round trips.
_RECORD = _RECORD_FROM.format(source="metering_staged_rows s")
_STAGED_TYPES = (
    "uuid", "text", "text", "text", "text", "text", "smallint", "bigint", "integer", "bigint", "bigint",
    "bigint", "double precision", "double precision", "text", "text", "boolean", "bytea",
)  # fmt: skip
_RECORD_ARRAYS = _RECORD_FROM.format(
    source="unnest({}) AS s({})".format(
        ", ".join(f"${i}::{t}[]" for i, t in enumerate(_STAGED_TYPES, start=1)), ", ".join(STAGED_COLUMNS)
    )
)
SMALL_BATCH = 50

_DELTA = """
INSERT INTO metering_quota_deltas (batch_id, tenant_id, billing_month, meter, quantity)
VALUES ($1, $2, $3, $4, $5)
"""


@dataclass(frozen=True)
class QuotaDelta:
    """What a recorded batch adds to one tenant's counter of one meter in one billing month."""

    tenant_id: str
    billing_month: date
    meter: int
    quantity: float


@dataclass(frozen=True)
class RecordedBatch:
    batch_id: uuid.UUID
    recorded: int
    duplicates: int
    deltas: list[QuotaDelta]
    # (partition, offset) of the dead letters this batch stored first.
    new_dead_letters: set[tuple[int, int]]


def _deltas(rows: Sequence[asyncpg.Record]) -> list[QuotaDelta]:
    totals: dict[tuple[str, date, int], float] = {}
    for row in rows:
        meter = METER_OF_TYPE[row["event_type"]]
        amount = quantity(row["event_type"], row["event_count"], row["audio_seconds"], row["storage_mb"])
        key = (row["tenant_id"], row["billing_month"], meter)
        totals[key] = totals.get(key, 0.0) + amount
    return [QuotaDelta(t, month, meter, amount) for (t, month, meter), amount in sorted(totals.items())]


async def record_batch(
    pool: asyncpg.Pool, events: Sequence[StagedRow], dead_letters: Sequence[DeadLetter] = ()
) -> RecordedBatch:
    """Record `events` (de-duplicated by event_id), their rollups and quota deltas, and
    `dead_letters`, in one transaction."""
    batch_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        deltas: list[QuotaDelta] = []
        recorded = 0
        if events:
            if len(events) <= SMALL_BATCH:
                rows = await conn.fetch(
                    _RECORD_ARRAYS, *(list(column) for column in zip(*events, strict=True))
                )
            else:
                await conn.execute(_STAGING)
                await conn.copy_records_to_table(
                    "metering_staged_rows", records=events, columns=STAGED_COLUMNS
                )
                rows = await conn.fetch(_RECORD)
            recorded = sum(row["event_count"] for row in rows)
            deltas = _deltas(rows)
            if deltas:
                await conn.executemany(
                    _DELTA, [(batch_id, d.tenant_id, d.billing_month, d.meter, d.quantity) for d in deltas]
                )
        new_letters = await dead_letter_store.insert(conn, dead_letters) if dead_letters else set()
    return RecordedBatch(batch_id, recorded, len(events) - recorded, deltas, new_letters)
