"""Reading the usage topic back, as the metering sink would: every record, from the beginning."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from macp.common.v1 import usage_pb2


@dataclass(frozen=True)
class UsageRecord:
    event: usage_pb2.UsageEvent
    key: bytes
    headers: dict[str, bytes]


async def read_usage(
    bootstrap: str, topic: str, *, until: int, tenant_id: str, seconds: float = 30.0
) -> list[UsageRecord]:
    """The records of `tenant_id` on `topic` once `until` distinct event ids are there (or the time is up)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[UsageRecord] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        partitions: list[TopicPartition] = []
        while not partitions and loop.time() < deadline:
            found = await consumer._client.fetch_all_metadata()
            partitions = [TopicPartition(topic, p) for p in found.partitions_for_topic(topic) or ()]
            if not partitions:
                await asyncio.sleep(0.2)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                for message in batch:
                    event = usage_pb2.UsageEvent.FromString(message.value)
                    if event.tenant_id == tenant_id:
                        headers = {name: value for name, value in message.headers}
                        records.append(UsageRecord(event, message.key, headers))
            if len({r.event.event_id for r in records}) >= until:
                break
    finally:
        await consumer.stop()
    return records
