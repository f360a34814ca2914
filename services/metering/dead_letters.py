"""Publishing dead letters to their topic exactly once, even across a crash.

A dead letter is stored in Postgres with its batch (the outbox), then published, then marked. A
process that dies after publishing and before marking leaves a row that looks unpublished; its
successor on that partition reads the dead-letter partition from the row's `search_from_offset`
(its end before the publish) and marks what it finds there instead of publishing it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.metering.store import dead_letters as store
from services.metering.store.dead_letters import DeadLetter

log = logging.getLogger("macp.metering.dead_letters")

REASON_HEADER = "macp-dead-letter-reason"
SOURCE_TOPIC_HEADER = "macp-source-topic"
SOURCE_PARTITION_HEADER = "macp-source-partition"
SOURCE_OFFSET_HEADER = "macp-source-offset"
READ_TIMEOUT_MS = 500


def headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    return [
        (REASON_HEADER, letter.reason.encode()),
        (SOURCE_TOPIC_HEADER, letter.source_topic.encode()),
        (SOURCE_PARTITION_HEADER, str(letter.source_partition).encode()),
        (SOURCE_OFFSET_HEADER, str(letter.source_offset).encode()),
    ]


def source_of(record_headers: Sequence[tuple[str, bytes]]) -> tuple[str, int, int] | None:
    """The (topic, partition, offset) a dead-letter record came from, from its headers."""
    found = {name: value.decode() for name, value in record_headers}
    try:
        return (
            found[SOURCE_TOPIC_HEADER],
            int(found[SOURCE_PARTITION_HEADER]),
            int(found[SOURCE_OFFSET_HEADER]),
        )
    except (KeyError, ValueError):
        return None


class DeadLetterPublisher:
    """Publishes a topic's dead letters; `reader` (a group-less consumer) reads the dead-letter
    topic back to settle rows left in doubt by a crash."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        reader: AIOKafkaConsumer,
        topic: str,
        dead_letter_topic: str,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._reader = reader
        self._topic = topic
        self.dead_letter_topic = dead_letter_topic
        self._partitions: list[int] = []
        # Batches recorded side by side publish one after the other: each publish sends every
        # unpublished letter of its partitions, so two at once could both send the same one.
        self._publishing = asyncio.Lock()

    async def start(self) -> None:
        partitions = await self._producer.partitions_for(self.dead_letter_topic)
        self._partitions = sorted(partitions)

    def partition_for(self, source_partition: int) -> int:
        """Each source partition's dead letters go to one dead-letter partition, in order."""
        return self._partitions[source_partition % len(self._partitions)]

    async def end_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        tps = [TopicPartition(self.dead_letter_topic, p) for p in set(partitions)]
        ends = await self._reader.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}

    async def publish(self, source_partitions: Iterable[int], new: set[tuple[int, int]]) -> int:
        """Publish every unpublished dead letter of `source_partitions`: those in `new` were stored
        by this process just now; any other was left by a predecessor (or by a batch of this
        process that has not published yet) and is checked against the topic first. Returns how
        many records this call published."""
        async with self._publishing:
            return await self._publish(source_partitions, new)

    async def _publish(self, source_partitions: Iterable[int], new: set[tuple[int, int]]) -> int:
        pending = await store.unpublished(self._pool, self._topic, source_partitions)
        if not pending:
            return 0
        in_doubt = [d for d in pending if (d.source_partition, d.source_offset) not in new]
        already = await self._already_published(in_doubt) if in_doubt else set()
        to_send = [d for d in pending if (d.source_partition, d.source_offset) not in already]
        sends = [
            await self._producer.send(
                self.dead_letter_topic,
                value=d.payload,
                key=d.key,
                partition=d.dead_letter_partition,
                headers=headers(d),
            )
            for d in to_send
        ]
        await asyncio.gather(*sends)
        await store.mark_published(self._pool, pending)
        if already:
            log.info("dead letters found already published", extra={"count": len(already)})
        return len(to_send)

    async def _already_published(self, letters: Sequence[DeadLetter]) -> set[tuple[int, int]]:
        """(source partition, offset) of `letters` that are already on the dead-letter topic."""
        wanted = {(d.source_partition, d.source_offset) for d in letters}
        start: dict[int, int] = {}
        for d in letters:
            start[d.dead_letter_partition] = min(
                start.get(d.dead_letter_partition, d.search_from_offset), d.search_from_offset
            )
        ends = await self.end_offsets(start)
        found: set[tuple[int, int]] = set()
        for partition, offset in start.items():
            tp = TopicPartition(self.dead_letter_topic, partition)
            self._reader.assign([tp])
            self._reader.seek(tp, offset)
            while await self._reader.position(tp) < ends[partition]:
                batch = await self._reader.getmany(tp, timeout_ms=READ_TIMEOUT_MS)
                for record in batch.get(tp, []):
                    source = source_of(list(record.headers))
                    if source is not None and source[0] == self._topic and source[1:] in wanted:
                        found.add(source[1:])
        return found
