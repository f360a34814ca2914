"""Reading a topic back whole, and waiting for the metering database to settle, in tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition


async def read_all(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record on `topic` now, from the beginning of each partition to its end."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        partitions = reader.partitions_for_topic(topic)
        while partitions is None:
            await reader.force_metadata_update()
            partitions = reader.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        for tp in tps:
            while await reader.position(tp) < ends[tp]:
                batch = await reader.getmany(tp, timeout_ms=500)
                records += batch.get(tp, [])
        return records
    finally:
        await reader.stop()


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.1)
