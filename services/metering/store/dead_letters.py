"""The dead-letter outbox: rows written with their batch, marked once published to Kafka."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class DeadLetter:
    """A record that is not a valid usage event, where it came from, and where it goes.

    search_from_offset: the dead-letter partition's end offset before this record was published;
    whoever finds it unpublished after a crash reads the topic from there to see if it went out."""

    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    payload: bytes
    reason: str
    dead_letter_partition: int
    search_from_offset: int


_INSERT = """
INSERT INTO metering_dead_letters
    (source_topic, source_partition, source_offset, record_key, payload, reason,
     dead_letter_partition, search_from_offset)
SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bytea[], $5::bytea[], $6::text[],
                     $7::int[], $8::bigint[])
ON CONFLICT DO NOTHING
RETURNING source_offset, source_partition
"""


async def insert(conn: asyncpg.Connection, letters: Sequence[DeadLetter]) -> set[tuple[int, int]]:
    """Store `letters`; returns the (partition, offset) of those that were new (a letter already
    stored came from a predecessor, which may or may not have published it)."""
    columns = list(
        zip(
            *(
                (
                    d.source_topic,
                    d.source_partition,
                    d.source_offset,
                    d.key,
                    d.payload,
                    d.reason,
                    d.dead_letter_partition,
                    d.search_from_offset,
                )
                for d in letters
            ),
            strict=True,
        )
    )
    rows = await conn.fetch(_INSERT, *columns)
    return {(row["source_partition"], row["source_offset"]) for row in rows}


def _letter(row: asyncpg.Record) -> DeadLetter:
    return DeadLetter(
        source_topic=row["source_topic"],
        source_partition=row["source_partition"],
        source_offset=row["source_offset"],
        key=row["record_key"],
        payload=row["payload"],
        reason=row["reason"],
        dead_letter_partition=row["dead_letter_partition"],
        search_from_offset=row["search_from_offset"],
    )


async def unpublished(pool: asyncpg.Pool, topic: str, partitions: Iterable[int]) -> list[DeadLetter]:
    rows = await pool.fetch(
        """
        SELECT * FROM metering_dead_letters
        WHERE source_topic = $1 AND source_partition = ANY($2::int[]) AND publish_time IS NULL
        ORDER BY source_partition, source_offset
        """,
        topic,
        list(partitions),
    )
    return [_letter(row) for row in rows]


async def mark_published(pool: asyncpg.Pool, letters: Sequence[DeadLetter]) -> None:
    if not letters:
        return
    await pool.execute(
        """
        UPDATE metering_dead_letters d SET publish_time = now()
        FROM unnest($1::text[], $2::int[], $3::bigint[]) AS p(topic, part, off)
        WHERE d.source_topic = p.topic AND d.source_partition = p.part AND d.source_offset = p.off
        """,
        [d.source_topic for d in letters],
        [d.source_partition for d in letters],
        [d.source_offset for d in letters],
    )
