"""Recording a batch of usage events in one transaction: distinct events, their rollups, the quota
deltas they cause and the batch's dead letters, all or nothing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import asyncpg

from services.metering.events import STAGED_COLUMNS, StagedRow
from services.metering.meters import METER_OF_TYPE, measure
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
    RETURNING event_id, tenant_id, billing_month, user_id, agent_id, conversation_id, model, event_type,
              estimated, input_tokens, output_tokens, duration_ms, audio_seconds, storage_mb
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
), counted AS (
    -- What the batch adds to each counter (meter_measures: which of the group's sums it takes).
    SELECT g.tenant_id, g.billing_month, m.meter,
           sum(CASE m.measure WHEN 'audio_seconds' THEN g.audio_seconds
                              WHEN 'storage_mb' THEN g.storage_mb
                              ELSE g.event_count END)::double precision AS quantity
    FROM grouped g JOIN (VALUES {meter_measures}) AS m(event_type, meter, measure) USING (event_type)
    GROUP BY g.tenant_id, g.billing_month, m.meter
), deltas AS (
    INSERT INTO metering_quota_deltas (batch_id, tenant_id, billing_month, meter, quantity)
    SELECT {batch}, tenant_id, billing_month, meter, quantity FROM counted
    RETURNING tenant_id, billing_month, meter, quantity
)
-- `rolled` runs whether or not it is read (Postgres runs every data-modifying WITH once, fully).
-- One row at least: the count of events recorded, beside each delta (none if all were duplicates);
-- and, when asked for (a batch of several holds' events), the ids of the events recorded.
SELECT r.recorded, {inserted_ids} AS inserted_ids, d.tenant_id, d.billing_month, d.meter, d.quantity
FROM (SELECT coalesce(sum(event_count), 0)::bigint AS recorded FROM grouped) r LEFT JOIN deltas d ON true
"""


# The SQL twin of meters.quantity, written out from meters.measure so the two cannot drift.
_METER_MEASURES = ", ".join(
    f"({event_type}::smallint, {meter}::smallint, '{measure(event_type)}')"
    for event_type, meter in sorted(METER_OF_TYPE.items())
)

# A big batch (the consumer's) is COPYed into the staging table first; a few events (a Commit's)
# go in the statement itself as arrays: one statement, one round trip, its own transaction.
_NO_IDS = "NULL::uuid[]"
_IDS = "(SELECT array_agg(event_id) FROM inserted)"
_RECORD_COPIED = {
    ids: _RECORD_FROM.format(
        source="metering_staged_rows s", meter_measures=_METER_MEASURES, batch="$1::uuid", inserted_ids=ids
    )
    for ids in (_NO_IDS, _IDS)
}
_STAGED_TYPES = (
    "uuid", "text", "text", "text", "text", "text", "smallint", "bigint", "integer", "bigint", "bigint",
    "bigint", "double precision", "double precision", "text", "text", "boolean", "bytea",
)  # fmt: skip
_RECORD_ARRAYS = {
    ids: _RECORD_FROM.format(
        source="unnest({}) AS s({})".format(
            ", ".join(f"${i}::{t}[]" for i, t in enumerate(_STAGED_TYPES, start=1)),
            ", ".join(STAGED_COLUMNS),
        ),
        meter_measures=_METER_MEASURES,
        batch=f"${len(_STAGED_TYPES) + 1}::uuid",
        inserted_ids=ids,
    )
    for ids in (_NO_IDS, _IDS)
}
SMALL_BATCH = 50


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
    # The ids (lower-case text) of the events recorded, when asked for (`record_batch(ids=True)`).
    inserted: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Answer:
    recorded: int
    deltas: list[QuotaDelta]
    inserted: frozenset[str]


def _recorded(rows: Sequence[asyncpg.Record]) -> _Answer:
    """The statement's answer: how many events it recorded, the deltas they cause, and the ids
    recorded if it was asked for them."""
    deltas = [
        QuotaDelta(row["tenant_id"], row["billing_month"], row["meter"], row["quantity"])
        for row in rows
        if row["tenant_id"] is not None
    ]
    ids = rows[0]["inserted_ids"] or ()
    return _Answer(
        rows[0]["recorded"],
        sorted(deltas, key=lambda d: (d.tenant_id, d.billing_month, d.meter)),
        frozenset(str(event_id) for event_id in ids),
    )


async def _record(
    conn: asyncpg.Connection | asyncpg.Pool, events: Sequence[StagedRow], batch_id: uuid.UUID, ids: bool
) -> _Answer:
    returned = _IDS if ids else _NO_IDS
    if len(events) <= SMALL_BATCH:
        columns = (list(column) for column in zip(*events, strict=True))
        return _recorded(await conn.fetch(_RECORD_ARRAYS[returned], *columns, batch_id))
    # Only inside a transaction: the staging table empties itself at commit.
    await conn.execute(_STAGING)
    await conn.copy_records_to_table("metering_staged_rows", records=events, columns=STAGED_COLUMNS)
    return _recorded(await conn.fetch(_RECORD_COPIED[returned], batch_id))


async def record_batch(
    pool: asyncpg.Pool,
    events: Sequence[StagedRow],
    dead_letters: Sequence[DeadLetter] = (),
    *,
    ids: bool = False,
) -> RecordedBatch:
    """Record `events` (de-duplicated by event_id), their rollups and quota deltas, and
    `dead_letters`, in one transaction; with `ids`, say which events were recorded (CommitHolds
    answers each hold with its own count)."""
    batch_id = uuid.uuid4()
    if events and len(events) <= SMALL_BATCH and not dead_letters:
        # A Commit's few events: one statement, which is its own transaction (no BEGIN and COMMIT
        # round trips around it).
        answer = await _record(pool, events, batch_id, ids)
        return RecordedBatch(
            batch_id, answer.recorded, len(events) - answer.recorded, answer.deltas, set(), answer.inserted
        )
    answer = _Answer(0, [], frozenset())
    async with pool.acquire() as conn, conn.transaction():
        if events:
            answer = await _record(conn, events, batch_id, ids)
        new_letters = await dead_letter_store.insert(conn, dead_letters) if dead_letters else set()
    return RecordedBatch(
        batch_id, answer.recorded, len(events) - answer.recorded, answer.deltas, new_letters, answer.inserted
    )
