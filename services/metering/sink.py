"""The usage topic's sink: each batch of records becomes one Postgres transaction.

Valid events are recorded (de-duplicated by event_id) with their rollups and quota deltas;
records that cannot be decoded or fail validation are stored as dead letters in the same
transaction and then published to the dead-letter topic. Only then does the consumer loop commit
the batch's offsets. The quota deltas are applied to Redis last; if the process dies first, the
sweeper applies them later (see quota_counters.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg
from aiokafka import TopicPartition

from services.metering.dead_letters import DeadLetterPublisher
from services.metering.events import EventRow, MalformedEvent, decode, validated_row
from services.metering.quota_counters import QuotaCounters
from services.metering.store.dead_letters import DeadLetter
from services.metering.store.ingest import record_batch
from services.runtime.consumer import Record


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

    async def handle(self, records: Sequence[Record]) -> Mapping[str, int]:
        rows: list[EventRow] = []
        malformed: list[tuple[Record, str]] = []
        for record in records:
            try:
                rows.append(validated_row(decode(record.value)))
            except MalformedEvent as exc:
                malformed.append((record, str(exc)))
        letters = await self._letters(malformed)
        batch = await record_batch(self._pool, rows, letters)
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
