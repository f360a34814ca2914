"""The usage topic's sink: each batch of records becomes one Postgres transaction.

Valid events are recorded (de-duplicated by event_id) with their rollups and quota deltas;
records that cannot be decoded or fail validation are stored as dead letters in the same
transaction and then published to the dead-letter topic. Only then does the consumer loop commit
the batch's offsets. The quota deltas are applied to Redis last; if the process dies first, the
sweeper applies them later (see quota_counters.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg
from aiokafka import TopicPartition

from services.metering.dead_letters import DeadLetterPublisher
from services.metering.events import MalformedEvent, StagedRow, row_of_record
from services.metering.quota_counters import QuotaCounters
from services.metering.store.dead_letters import DeadLetter
from services.metering.store.ingest import record_batch
from services.runtime.consumer import Record

# Records decoded between two yields to the event loop while a batch is prepared: small enough
# that the batch being recorded meanwhile gets its turn at every database reply (each chunk is a
# few milliseconds), large enough that yielding costs nothing measurable.
PREPARE_CHUNK = 500


@dataclass(frozen=True)
class PreparedBatch:
    """A batch's valid events as staging rows, and its records that are not valid events."""

    rows: list[StagedRow]
    malformed: list[tuple[Record, str]]


class UsageSink:
    def __init__(
        self, pool: asyncpg.Pool, dead_letters: DeadLetterPublisher, counters: QuotaCounters, topic: str
    ) -> None:
        self._pool = pool
        self._dead_letters = dead_letters
        self._counters = counters
        self._topic = topic

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Settle the dead letters a predecessor on these partitions may have left half-published."""
        await self._dead_letters.publish(
            {tp.partition for tp in partitions if tp.topic == self._topic}, set()
        )

    async def prepare(self, records: Sequence[Record]) -> PreparedBatch:
        rows: list[StagedRow] = []
        malformed: list[tuple[Record, str]] = []
        for start in range(0, len(records), PREPARE_CHUNK):
            if start:
                await asyncio.sleep(0)
            for record in records[start : start + PREPARE_CHUNK]:
                try:
                    rows.append(row_of_record(record.value))
                except MalformedEvent as exc:
                    malformed.append((record, str(exc)))
        return PreparedBatch(rows, malformed)

    async def handle(self, prepared: PreparedBatch) -> Mapping[str, int]:
        malformed = prepared.malformed
        letters = await self._letters(malformed)
        batch = await record_batch(self._pool, prepared.rows, letters)
        if letters:
            await self._dead_letters.publish({r.partition for r, _ in malformed}, batch.new_dead_letters)
        await self._counters.apply(batch.batch_id, batch.deltas)
        return {"recorded": batch.recorded, "duplicate": batch.duplicates, "dead_lettered": len(letters)}

    async def _letters(self, malformed: list[tuple[Record, str]]) -> list[DeadLetter]:
        if not malformed:
            return []
        publisher = self._dead_letters
        ends = await publisher.end_offsets(publisher.partition_for(r.partition) for r, _ in malformed)
        return [
            DeadLetter(
                source_topic=record.topic,
                source_partition=record.partition,
                source_offset=record.offset,
                key=record.key,
                payload=record.value or b"",
                reason=reason,
                dead_letter_partition=publisher.partition_for(record.partition),
                search_from_offset=ends[publisher.partition_for(record.partition)],
            )
            for record, reason in malformed
        ]
